"""Task registry: every task is a pure function (tokenizer, length, depth, seed) -> Sample."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

# Bind modules, not functions, so `tasks.passkey` stays the module (its templates are public).
from megatron_endprompt.eval.tasks import aggregation, niah, passkey, vt
from megatron_endprompt.eval.tasks.base import Sample, TokenizerLike, derive_seed

__all__ = [
    "TASKS",
    "PERPLEXITY",
    "Sample",
    "TaskSpec",
    "TokenizerLike",
    "derive_seed",
    "get_task",
    "make_sample",
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


def make_sample(
    task: str, tokenizer: TokenizerLike, length: int, depth: float | None, seed: int, index: int = 0
) -> Sample:
    """Sample `index` of (task, length, depth) under base `seed`; the same inputs give the same Sample."""
    spec = get_task(task)
    sample_seed = derive_seed(seed, spec.name, length, depth if spec.uses_depth else None, index)
    return spec.generate(tokenizer, length, depth if spec.uses_depth else None, sample_seed)
