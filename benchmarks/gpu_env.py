"""What the GPU check needs to know about a machine: its environment, and which of our dependencies it lacks.

    python3 benchmarks/gpu_env.py             # JSON: device, torch / CUDA / cuDNN / Triton, SDPA backends, versions
    python3 benchmarks/gpu_env.py --missing   # pip names of the required packages that are not importable
    python3 benchmarks/gpu_env.py --wheels    # pip names of every package the check may install offline

`--missing` and `--wheels` use only the standard library (no torch import), so `prepare_gpu_wheels.sh` can ask
on any machine, and the one list below stays the single source for what is carried and what is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import platform
import sys

# (import name, pip name) of what `megatron_endprompt` imports beyond torch / triton / transformers / pytest,
# which the lent GPU machines bring: megatron-core is never there, the small ones may not be.
REQUIRED = (
    ("megatron.core", "megatron-core==0.16.1"),
    ("sentencepiece", "sentencepiece"),
    ("yaml", "pyyaml"),
    ("safetensors", "safetensors"),
    ("psutil", "psutil"),
    ("tqdm", "tqdm"),
)
# Reported, never installed: they come with the machine (or, for Transformer Engine, with the NGC image).
REPORTED = ("torch", "triton", "transformers", "transformer-engine", "transformer-engine-torch", "pytest")


def missing() -> list[str]:
    """pip names of the REQUIRED packages whose module cannot be found (found without importing it)."""
    out = []
    for module, pip_name in REQUIRED:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package (`megatron`) is absent
            found = False
        if not found:
            out.append(pip_name)
    return out


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Versions, device and SDPA backends; Transformer Engine reported as importable or not (what picks TE)."""
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}  # fmt: skip
    if torch.cuda.is_available():
        b = torch.backends.cuda
        info.update(
            device=torch.cuda.get_device_name(0),
            capability=list(torch.cuda.get_device_capability(0)),
            memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            sdpa={"flash": b.flash_sdp_enabled(), "cudnn": b.cudnn_sdp_enabled(),
                  "mem_efficient": b.mem_efficient_sdp_enabled(), "math": b.math_sdp_enabled()},
        )  # fmt: skip
    dists = [pip_name.split("==")[0] for _, pip_name in REQUIRED] + list(REPORTED)
    info["versions"] = {dist: _version(dist) for dist in dists}
    info["transformer_engine_importable"] = importlib.util.find_spec("transformer_engine") is not None
    info["missing"] = missing()
    return info


def main(argv: list[str]) -> None:
    if argv == ["--missing"]:
        for pip_name in missing():
            print(pip_name)
    elif argv == ["--wheels"]:
        print("\n".join(pip_name for _, pip_name in REQUIRED))
    elif not argv:
        print(json.dumps(environment(), indent=1))
    else:
        raise SystemExit(f"usage: gpu_env.py [--missing | --wheels], got {argv}")


if __name__ == "__main__":
    main(sys.argv[1:])
