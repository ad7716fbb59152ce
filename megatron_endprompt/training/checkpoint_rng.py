"""Per-rank RNG states in a checkpoint, stored without pickle: one safetensors file per rank.

Tensors (torch CPU state, each CUDA device's state, megatron's RNG-tracker states) are safetensors entries; the
python and numpy Mersenne-Twister states are plain integers, kept as JSON in the file's string metadata. Reading
such a file runs no code, whatever its bytes are (a planted pickle is refused as "not a safetensors file").
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

RNG_SUFFIX = ".safetensors"


class RngStateError(ValueError):
    """An RNG state file that cannot be read back; the message names the file."""


def capture() -> dict[str, Any]:
    """Every RNG stream of this process: python, numpy, torch CPU, CUDA devices, megatron's tracker."""
    from megatron.core import tensor_parallel

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def restore(state: dict[str, Any]) -> None:
    """Set every stream `capture` recorded (CUDA only where CUDA is available)."""
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def write(file: str | Path, state: dict[str, Any]) -> None:
    """Store a `capture()` result as safetensors (tensors) + JSON metadata (python and numpy states)."""
    from safetensors.torch import save_file

    tensors = {"torch": state["torch"]}
    for i, cuda in enumerate(state["cuda"] or []):
        tensors[f"cuda.{i}"] = cuda
    for name, value in state["tracker"].items():
        if not torch.is_tensor(value):
            raise TypeError(f"RNG tracker state {name!r} is a {type(value).__name__}, not a tensor")
        tensors[f"tracker.{name}"] = value
    version, internal, gauss = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    metadata = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": json.dumps([kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]),
        "num_cuda": str(len(state["cuda"] or [])),
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(file), metadata=metadata)


def read(file: str | Path) -> dict[str, Any]:
    """The state `write` stored; RngStateError names the file when it is not such a file."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        version, internal, gauss = json.loads(meta["python"])
        kind, keys, pos, has_gauss, cached = json.loads(meta["numpy"])
        num_cuda = int(meta["num_cuda"])
        return {
            "python": (version, tuple(internal), gauss),
            "numpy": (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
            "torch": tensors["torch"],
            "cuda": [tensors[f"cuda.{i}"] for i in range(num_cuda)] if num_cuda else None,
            "tracker": {
                k.removeprefix("tracker."): v for k, v in tensors.items() if k.startswith("tracker.")
            },
        }
    except Exception as err:  # noqa: BLE001 - any failure to parse is the same user-facing problem
        raise RngStateError(f"{file}: not a readable RNG state file ({type(err).__name__}: {err})") from None
