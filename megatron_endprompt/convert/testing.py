"""Write a random HF LLaMA directory without building the model (for benchmarks and tests).

Tensors are generated and written one shard at a time, so a multi-GB checkpoint costs about one shard of
memory. Weights are N(0, init_method_std); norm weights are 1 + N(0, 0.1) so that they are not trivial.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_endprompt.convert.hf_config import HFSource, build_hf_config
from megatron_endprompt.convert.hf_io import DEFAULT_MAX_SHARD_BYTES, write_hf_shards
from megatron_endprompt.convert.key_map import expected_hf_shapes
from megatron_endprompt.model.config import ModelConfig


def write_random_hf_llama(
    out_dir: str | Path,
    cfg: ModelConfig,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    dialect: str = "v4",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> list[str]:
    """Write config.json + safetensors shards of a random LlamaForCausalLM `cfg`; returns the shard names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name, shape in expected_hf_shapes(cfg).items():
            t = torch.randn(shape, generator=generator, dtype=torch.float32)
            t = 1.0 + 0.1 * t if name.endswith("norm.weight") else t * cfg.init_method_std
            yield name, t.to(dtype)

    files = write_hf_shards(out_dir, tensors(), max_shard_bytes)
    dtype_name = str(dtype).removeprefix("torch.")
    config = build_hf_config(
        cfg, HFSource(dialect=dialect, extra={"bos_token_id": 1, "eos_token_id": 2}), dtype_name
    )
    with open(out_dir / "config.json", "w") as f:
        json.dump(config, f, indent=2)
    return files


def to_v4_dialect(raw: dict) -> dict:
    """A transformers-v5 config.json dict rewritten in the v4 dialect (top-level rope_theta + rope_scaling)."""
    raw = dict(raw)
    block = dict(raw.pop("rope_parameters") or {})
    raw["rope_theta"] = block.pop("rope_theta", 10000.0)
    raw["rope_scaling"] = None if block.get("rope_type", "default") == "default" else block
    if "dtype" in raw:
        raw["torch_dtype"] = raw.pop("dtype")
    return raw


def save_tiny_hf_llama(
    out_dir: str | Path,
    *,
    rope_parameters: dict | None = None,
    dialect: str = "v5",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **config_overrides,
) -> Path:
    """Build a tiny random `transformers.LlamaForCausalLM` (GQA, 2 layers, width 64, vocab 300, 64K positions)
    and `save_pretrained` it; `dialect="v4"` rewrites config.json in the v4 RoPE dialect."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = dict(
        hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, max_position_embeddings=65536, rms_norm_eps=1e-5,
        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip
    kwargs.update(config_overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**kwargs)).to(dtype)
    with torch.no_grad():  # HF initialises norms to exactly 1; perturb them so that a swap would show
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    if dialect == "v4":
        path = out_dir / "config.json"
        path.write_text(json.dumps(to_v4_dialect(json.loads(path.read_text())), indent=2))
    return out_dir
