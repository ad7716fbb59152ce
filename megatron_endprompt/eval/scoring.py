"""RULER's string-match scoring, and which tasks use which metric.

RULER scores a prediction against a list of reference strings by case-insensitive substring match:
- `string_match_all`: the fraction of references found in the prediction (partial credit), x100, averaged.
- `string_match_part`: 100 when any reference is found, else 0, averaged.
RULER assigns `string_match_all` to niah, variable tracking, common and frequent word extraction, and
`string_match_part` to QA. Passkey retrieval has one reference, so both metrics agree; we use `all`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_prediction(text: str) -> str:
    """RULER's clean-up: strip, turn control characters into newlines, strip again."""
    return _CONTROL.sub("\n", text.strip()).strip()


def _found(reference: str, prediction: str) -> float:
    return 1.0 if reference.lower() in prediction.lower() else 0.0


def sample_match_all(prediction: str, references: Sequence[str]) -> float:
    """Score of one sample under `string_match_all`, in [0, 100]."""
    if not references:
        raise ValueError("a sample needs at least one reference answer")
    return 100.0 * sum(_found(r, prediction) for r in references) / len(references)


def sample_match_part(prediction: str, references: Sequence[str]) -> float:
    """Score of one sample under `string_match_part`, 0 or 100."""
    if not references:
        raise ValueError("a sample needs at least one reference answer")
    return 100.0 * max(_found(r, prediction) for r in references)


def _mean(values: list[float]) -> float:
    if not values:
        raise ValueError("cannot score an empty list of predictions")
    return sum(values) / len(values)


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over samples of the fraction of references found in the prediction, x100 (RULER)."""
    _check_pairs(predictions, references)
    return _mean([sample_match_all(p, r) for p, r in zip(predictions, references, strict=True)])


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over samples of 100 if any reference is found in the prediction, else 0 (RULER)."""
    _check_pairs(predictions, references)
    return _mean([sample_match_part(p, r) for p, r in zip(predictions, references, strict=True)])


def _check_pairs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(predictions, str):
        raise TypeError("predictions must be a list of strings, not one string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")


# RULER's task families and their metric (RULER scripts/eval/synthetic/constants.py).
METRIC_BY_FAMILY: dict[str, str] = {
    "passkey": "string_match_all",
    "niah": "string_match_all",
    "vt": "string_match_all",
    "cwe": "string_match_all",
    "fwe": "string_match_all",
    "qa": "string_match_part",
}
SAMPLE_METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "string_match_all": sample_match_all,
    "string_match_part": sample_match_part,
}


def task_family(task: str) -> str:
    """`niah_multikey_2` -> `niah`, `ruler_vt` -> `vt`, `qa_squad` -> `qa`."""
    name = task.removeprefix("ruler_")
    for family in METRIC_BY_FAMILY:
        if name == family or name.startswith(family + "_"):
            return family
    raise ValueError(f"--tasks: no metric known for task {task!r}; families: {sorted(METRIC_BY_FAMILY)}")


def metric_name(task: str) -> str:
    """The RULER metric name for a task."""
    return METRIC_BY_FAMILY[task_family(task)]


def score_sample(task: str, prediction: str, references: Sequence[str]) -> float:
    """Score one raw model output (post-processed as RULER does) for `task`, in [0, 100]."""
    return SAMPLE_METRICS[metric_name(task)](postprocess_prediction(prediction), references)
