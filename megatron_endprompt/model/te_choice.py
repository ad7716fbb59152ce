"""The one place that decides whether Transformer Engine (TE) is used.

megatron-core 0.16.1 picks TE components as soon as `transformer_engine` imports (its fused Adam, its
multi-tensor kernels, the TE layer spec in examples). Those components need a CUDA device: on a CPU login node
with TE wheels, or the NGC image on a machine without a driver, they fail ("Found no NVIDIA driver"). This
project therefore uses TE only when it is importable AND a CUDA device is present, and says which it chose.

What follows the choice:
- layer spec: `model.specs.layer_spec` (TE spec, or the local spec with our SDPA attention and RMSNorm);
- optimizer and multi-tensor kernels: `parallel.cpu_support` rebinds megatron's module-level choices to torch
  and megatron's local implementations when there is no CUDA device (it does nothing on CUDA).

Nothing here imports torch or TE at module import (the training CLI's --help and --dry-run stay cheap).
"""

from __future__ import annotations

import importlib.util
import logging

logger = logging.getLogger(__name__)

_LOGGED: set[str] = set()


def te_installed() -> bool:
    """Whether `transformer_engine` can be imported (found on the path; not imported here)."""
    return importlib.util.find_spec("transformer_engine") is not None


def cuda_present() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def te_unusable_reason() -> str | None:
    """None when TE can run here; otherwise why not, in words for an error message."""
    if not te_installed():
        return "Transformer Engine is not installed (pip install transformer-engine[pytorch])"
    if not cuda_present():
        return "Transformer Engine is installed but no CUDA device is present (its layers need one)"
    return None


def te_usable() -> bool:
    """True when Transformer Engine is importable and a CUDA device is present."""
    return te_unusable_reason() is None


def resolve_use_te(use_te: bool | None) -> bool:
    """The `--model.use_te` setting made concrete: None = auto (TE when usable), True = required, False = off.

    Raises ValueError naming the flag when TE is required but cannot run here. Logs the choice once per
    process and outcome.
    """
    reason = te_unusable_reason() if use_te is not False else None
    if use_te is True and reason is not None:
        raise ValueError(f"--model.use_te true: {reason}; use --model.use_te null (auto) or false")
    chosen = use_te if use_te is not None else reason is None
    if chosen:
        _log_once("layer spec: Transformer Engine (importable, CUDA device present)")
    elif use_te is False:
        _log_once("layer spec: local (SDPA attention; --model.use_te false)")
    else:
        _log_once(f"layer spec: local (SDPA attention); not Transformer Engine: {reason}")
    return chosen


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.info(message)
