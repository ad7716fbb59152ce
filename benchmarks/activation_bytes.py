"""Bytes saved for backward per token per layer, counted on CPU: the arithmetic behind the GPU check's sizing.

Builds one and two layers of the chosen preset's shapes (small vocabulary), runs one bf16 forward + loss with
`saved_tensors_hooks` recording every distinct storage autograd keeps (parameters excluded), and reports the
per-layer difference divided by the tokens, and the rest (embedding, final norm, loss) per token. Attention on
CPU runs SDPA's flash kernel, which, like the GPU kernels, keeps no s x s matrix (the result is the same at
every length: run two `--seq` values to see it).

    python benchmarks/activation_bytes.py [--preset llama3-8b] [--seq 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import train_throughput as tt  # noqa: E402
from megatron_endprompt.model.config import get_preset  # noqa: E402


def saved_bytes(impl: str, preset: str, layers: int, seq: int) -> int:
    """Distinct non-parameter storage bytes autograd saves for one EndPrompt sample (chunked CE, 64 a chunk)."""
    cfg = get_preset(preset).replace(num_layers=layers, vocab_size=1024, max_position_embeddings=65536)
    spec = "-" if impl == "reference" else "local"
    case = tt.Case("count", impl, seq, 1, "endprompt", 65536, ce_chunk=64, spec=spec)
    model, loss_fn = tt.build(impl, cfg, torch.bfloat16, torch.device("cpu"), False, case)
    batch = tt.batch_for(case, cfg.vocab_size, torch.device("cpu"))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(model, batch)
    return sum(seen.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="llama3-8b", help="ModelConfig preset for the layer shapes")
    p.add_argument("--seq", type=int, default=256, help="tokens in the sample")
    args = p.parse_args()
    from megatron_endprompt.parallel import initialize

    initialize(tp=1, pp=1, cp=1, seed=1)
    for impl in ("ours", "reference"):
        one, two = (saved_bytes(impl, args.preset, n, args.seq) for n in (1, 2))
        per_layer, rest = (two - one) / args.seq / 1024, (2 * one - two) / args.seq / 1024
        print(f"{impl}: {per_layer:.1f} KiB per token per layer, {rest:.1f} KiB per token outside the layers")


if __name__ == "__main__":
    main()
