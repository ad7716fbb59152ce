"""HF side of the init-from-HF check: a random HF Llama (llama3 RoPE scaling, 64K positions) converted with
`convert.hf_to_megatron`, and the weighted loss that transformers computes on the shared batches.

Usage: python tests/distributed/_hf_reference.py OUT_DIR  -> OUT_DIR/{hf, megatron, reference.json}
Runs as its own process next to the 2-rank launch (conversion is single-process by design).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from megatron_endprompt.model.config import RopeScaling, get_preset

sys.path.insert(0, str(Path(__file__).parent))
from _batches import make_batches, weighted_loss_from_logits  # noqa: E402


def main(out: Path) -> None:
    from transformers import LlamaForCausalLM

    from megatron_endprompt.convert import hf_to_megatron
    from megatron_endprompt.convert.testing import write_random_hf_llama

    cfg = get_preset("tiny").replace(
        rope_scaling=RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=8192)
    )
    write_random_hf_llama(out / "hf", cfg, seed=3)
    hf_to_megatron(out / "hf", out / "megatron.tmp", tp=2)
    model = LlamaForCausalLM.from_pretrained(out / "hf", torch_dtype=torch.float32).eval()
    batches = make_batches()
    with torch.no_grad():
        logits = [model(mb["tokens"], position_ids=mb["position_ids"]).logits for mb in batches]
    (out / "reference.json").write_text(json.dumps({"loss": weighted_loss_from_logits(logits, batches)}))
    (out / "megatron.tmp").rename(out / "megatron")  # published last: the worker waits for this name


if __name__ == "__main__":
    main(Path(sys.argv[1]))
