"""Long-context evaluation: synthetic tasks, RULER scoring, perplexity by length, model backends, reports.

Public API (imported lazily: `import megatron_endprompt.eval` does not import torch):
- `evaluate(backend, tokenizer, tasks, lengths, depths, samples, seed, ...) -> results dict` (runner.py)
- `load_backend(path)`, `HFBackend`, `MegatronBackend` (backends.py)
- `make_sample(task, tokenizer, length, depth, seed, index)`, `TASKS`, `Sample` (tasks/)
- `string_match_all`, `string_match_part`, `score_sample` (scoring.py)
- `markdown_report`, `comparison_table` (report.py); `write_plots`, `score_plot`, `perplexity_plot` (plots.py)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate": "runner",
    "validate_request": "runner",
    "DEFAULT_DEPTHS": "runner",
    "load_backend": "backends",
    "HFBackend": "backends",
    "MegatronBackend": "backends",
    "ModelBackend": "backends",
    "make_sample": "tasks",
    "get_task": "tasks",
    "TASKS": "tasks",
    "Sample": "tasks",
    "string_match_all": "scoring",
    "string_match_part": "scoring",
    "score_sample": "scoring",
    "markdown_report": "report",
    "comparison_table": "report",
    "write_plots": "plots",
    "score_plot": "plots",
    "perplexity_plot": "plots",
    "depth_heatmap": "plots",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"megatron_endprompt.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'megatron_endprompt.eval' has no attribute {name!r}")
