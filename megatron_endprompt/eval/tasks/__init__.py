"""Task registry: every task is a pure function (tokenizer, length, depth, seed) -> Sample."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Bind modules, not functions, so `tasks.passkey` stays the module (its templates are public).
from megatron_endprompt.eval.tasks import aggregation, niah, passkey, vt
from megatron_endprompt.eval.tasks.base import Sample, TokenizerLike, derive_seed

__all__ = [
    "TASKS",
    "TASK_OPTIONS",
    "PERPLEXITY",
    "Sample",
    "TaskSpec",
    "TokenizerLike",
    "derive_seed",
    "get_task",
    "make_sample",
    "validate_task_options",
]

DEFAULT_DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Needle depths swept by default (fractions of the haystack)."""

PERPLEXITY = "perplexity"
"""Not a generation task: `--tasks perplexity` measures perplexity by length on held-out text."""


@dataclass(frozen=True)
class TaskSpec:
    """A generation task and how the runner drives it."""

    name: str
    generate: Callable[..., Sample]
    """(tokenizer, length, depth, seed, add_bos=True) -> Sample."""
    max_new_tokens: int
    """Greedy generation budget."""
    uses_depth: bool
    """Whether `depth` places a needle (depth sweeps and heatmaps only for these)."""


def _registry() -> dict[str, TaskSpec]:
    specs = [
        TaskSpec("passkey", passkey.passkey, passkey.MAX_NEW_TOKENS, True),
        TaskSpec("vt", vt.vt, vt.MAX_NEW_TOKENS, False),
        TaskSpec("cwe", aggregation.cwe, aggregation.CWE_MAX_NEW_TOKENS, False),
        TaskSpec("fwe", aggregation.fwe, aggregation.FWE_MAX_NEW_TOKENS, False),
    ]
    specs += [
        TaskSpec(name, functools.partial(niah.niah, name), cfg.max_new_tokens, True)
        for name, cfg in niah.VARIANTS.items()
    ]
    return {s.name: s for s in specs}


TASKS: dict[str, TaskSpec] = _registry()
ALIASES = {"ruler_vt": "vt", "ruler_cwe": "cwe", "ruler_fwe": "fwe", "variable_tracking": "vt"}


def get_task(name: str) -> TaskSpec:
    """Look up a task by name (lm-eval's `ruler_vt` style names are accepted); the error lists valid names."""
    key = ALIASES.get(name, name)
    if key not in TASKS:
        raise ValueError(f"--tasks: unknown task {name!r}; choose from {sorted(TASKS) + [PERPLEXITY]}")
    return TASKS[key]


TASK_OPTIONS: dict[str, dict[str, type]] = {
    "passkey": {"key_max": int},
    **{name: {"number_digits": int} for name, cfg in niah.VARIANTS.items() if cfg.value_type == "numbers"},
}
"""Options a task accepts (`--task-option passkey.key_max=999`) and their types; defaults follow RULER."""


def validate_task_options(options: Mapping[str, Mapping[str, object]] | None) -> dict[str, dict[str, object]]:
    """Check `{task: {option: value}}` against TASK_OPTIONS; errors name the flag and the accepted options."""
    out: dict[str, dict[str, object]] = {}
    for task, opts in (options or {}).items():
        name = get_task(task).name
        accepted = TASK_OPTIONS.get(name, {})
        for key, value in opts.items():
            if key not in accepted:
                raise ValueError(
                    f"--task-option {task}.{key}: unknown option; {name} accepts {sorted(accepted) or 'none'}"
                )
            if not isinstance(value, accepted[key]) or isinstance(value, bool):
                raise ValueError(
                    f"--task-option {task}.{key}: expected {accepted[key].__name__}, got {value!r}"
                )
        out[name] = dict(opts)
    return out


def make_sample(
    task: str,
    tokenizer: TokenizerLike,
    length: int,
    depth: float | None,
    seed: int,
    index: int = 0,
    options: Mapping[str, object] | None = None,
) -> Sample:
    """Sample `index` of (task, length, depth) under base `seed`; the same inputs give the same Sample.

    `options` are the task's keyword options (see TASK_OPTIONS), e.g. `{"key_max": 999}` for passkey.
    """
    spec = get_task(task)
    sample_seed = derive_seed(seed, spec.name, length, depth if spec.uses_depth else None, index)
    return spec.generate(
        tokenizer, length, depth if spec.uses_depth else None, sample_seed, **(options or {})
    )
