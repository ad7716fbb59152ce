"""HF LLaMA (safetensors + config.json) -> megatron-core distributed checkpoint of our model.

Everything that can be checked is checked before anything is written (architecture, rope type, tensor
names and shapes, layout); the checkpoint is then written into a temp dir next to the target and renamed.
Tensors are read one at a time with `safe_open`; the dist checkpoint save needs them all at once, so the
peak memory is about one copy of the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_endprompt.convert import key_map, megatron_io
from megatron_endprompt.convert.errors import ConversionError
from megatron_endprompt.convert.hf_config import read_hf_config
from megatron_endprompt.convert.hf_io import HFReader
from megatron_endprompt.convert.staging import check_output_dir, refuse_overwriting_input, staged_dir
from megatron_endprompt.model.config import ModelConfig
from megatron_endprompt.model.split import SplitNames, split_problems

logger = logging.getLogger(__name__)

_IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved


@dataclass(frozen=True)
class ConversionSummary:
    """What a conversion did (for the CLI's summary line and for tests)."""

    output_dir: str
    num_tensors: int
    num_elements: int
    dtype: str
    padded_vocab_size: int
    seconds: float


HF_SPLIT_NAMES = SplitNames(
    tp="--tp {}",
    pp="--pp {}",
    fields={
        "num_attention_heads": "the number of attention heads ({}, HF num_attention_heads)",
        "num_query_groups": "the number of query groups ({}, HF num_key_value_heads)",
        "ffn_hidden_size": "the MLP width ({}, HF intermediate_size)",
        "num_layers": "the number of layers ({}, HF num_hidden_layers)",
    },
)
"""The converter's flags and HF's config names in the model-split rule's messages."""


def check_layout(cfg: ModelConfig, tp: int, pp: int) -> None:
    """Refuse layouts the model cannot be split into (`model.split.split_problems`; the flags are the CLI's)."""
    problems = split_problems(cfg, tp, pp, names=HF_SPLIT_NAMES)
    if problems:
        raise ConversionError("; ".join(problems))


def check_hf_tensors(reader: HFReader, cfg: ModelConfig) -> torch.dtype:
    """Every expected tensor present with the right shape, nothing unexpected; returns the common dtype."""
    expected = key_map.expected_hf_shapes(cfg)
    present = reader.names()
    missing = sorted(set(expected) - present)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ConversionError(f"--hf-dir: missing tensor(s) {missing[:5]}{more} in {reader.hf_dir}")
    allowed_extra = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    unexpected = sorted(
        n for n in present - set(expected) if n not in allowed_extra and not n.endswith(_IGNORED_HF_SUFFIXES)
    )
    if unexpected:
        raise ConversionError(
            f"--hf-dir: unexpected tensor(s) {unexpected[:5]} for a LLaMA model with this config"
        )
    for name, shape in expected.items():
        actual = reader.shape(name)
        if actual != shape:
            raise ConversionError(
                f"--hf-dir: tensor {name} has shape {list(actual)}, but config.json implies {list(shape)}"
            )
    dtypes = {reader.dtype(n) for n in expected}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ConversionError(
            f"--hf-dir: tensors must share one floating-point dtype, found {sorted(map(str, dtypes))}"
        )
    return dtypes.pop()


def split_factory(item) -> list:
    """The ShardedTensors a ShardedTensorFactory stands for (SwiGLU fc1: the gate half, then the up half).

    Handing these to dist_checkpointing directly, each with its own buffer, avoids the factory's
    chunk-then-clone on save and its concatenation on load (each would cost another copy of fc1).
    """
    parts = item.build()
    return parts if isinstance(parts, list) else [parts]


def _set_data(item, tensor: torch.Tensor, name: str) -> None:
    if tuple(tensor.shape) != tuple(item.local_shape):
        raise ConversionError(
            f"{name}: packed shape {list(tensor.shape)} != model shape {list(item.local_shape)}"
        )
    item.data, item.dtype = tensor, tensor.dtype


def _fill(sharded_sd: dict, reader: HFReader, cfg: ModelConfig, padded_vocab: int, progress: bool) -> int:
    """Put HF tensors into the model's sharded state dict in place; returns the number of elements."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
    from tqdm import tqdm

    numel = 0
    for name in tqdm(list(sharded_sd), desc="hf->megatron", unit="tensor", disable=not progress):
        item = sharded_sd[name]
        found = key_map.match(name)
        if found is None:
            if name.endswith("_extra_state"):
                continue
            raise ConversionError(f"model tensor {name} has no HF counterpart in convert/key_map.py")
        rule, layer = found
        hf_tensors = [reader.get(n) for n in key_map.hf_names(rule, layer)]
        numel += sum(t.numel() for t in hf_tensors)
        if isinstance(item, ShardedTensorFactory):
            parts = split_factory(item)
            if rule.kind != "concat" or len(parts) != len(hf_tensors):
                raise ConversionError(f"{name}: unexpected sharded factory for a {rule.kind!r} rule")
            for part, tensor in zip(parts, hf_tensors, strict=True):
                _set_data(part, tensor, name)
            sharded_sd[name] = parts
            continue
        tensor = key_map.to_megatron(rule, hf_tensors, cfg, padded_vocab)
        if rule.kind == "vocab":
            # The TP=1 model pads the vocabulary less than --tp asks for: describe the bigger tensor.
            numel += tensor.numel() - hf_tensors[0].numel()
            sharded_sd[name] = ShardedTensor.from_rank_offsets(
                item.key, tensor, replica_id=item.replica_id, allow_shape_mismatch=True
            )
        else:
            _set_data(item, tensor, name)
    return numel


def hf_to_megatron(
    hf_dir: str | Path,
    megatron_dir: str | Path,
    tp: int = 1,
    pp: int = 1,
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    progress: bool = False,
) -> ConversionSummary:
    """Convert a HF LLaMA dir into a megatron dist checkpoint dir (see `megatron_io` for the layout).

    tp / pp: the layout the checkpoint is meant for. The checkpoint itself is layout-free (global
    tensors); tp sets the vocabulary padding (multiple of 128 * tp) and both are validated here.
    """
    start = time.time()
    megatron_io.require_single_process("hf-to-megatron")
    if overwrite:
        refuse_overwriting_input(megatron_dir, "--megatron-dir", {"--hf-dir": hf_dir})
    hf_dir = Path(hf_dir)
    cfg, source = read_hf_config(hf_dir)
    check_layout(cfg, tp, pp)
    reader = HFReader(hf_dir, allow_pickle=allow_pickle)
    dtype = check_hf_tensors(reader, cfg)
    check_output_dir(megatron_dir, overwrite, "--megatron-dir")
    padded_vocab = key_map.padded_vocab_size(cfg.vocab_size, tp)

    model = megatron_io.build_model(cfg, dtype, meta=True)
    sharded_sd = model.sharded_state_dict()
    numel = _fill(sharded_sd, reader, cfg, padded_vocab, progress)
    with staged_dir(megatron_dir, overwrite, "--megatron-dir") as tmp:
        megatron_io.save_dist_checkpoint(sharded_sd, tmp)
        megatron_io.write_json(tmp / megatron_io.MODEL_JSON, cfg.to_dict())
        assets = megatron_io.copy_hf_assets(hf_dir, tmp / megatron_io.HF_ASSETS_DIR)
        megatron_io.write_json(
            tmp / megatron_io.SOURCE_JSON,
            {
                "format_version": 1,
                "source": {"kind": "hf", "path": str(hf_dir.absolute())},
                "hf": source.to_dict(),
                "hf_assets": assets,
                "dtype": str(dtype).removeprefix("torch."),
                "padded_vocab_size": padded_vocab,
                "layout_hint": {"tp": tp, "pp": pp},
            },
        )
    del sharded_sd, model
    summary = ConversionSummary(
        str(Path(megatron_dir).absolute()), len(key_map.expected_hf_shapes(cfg)), numel,
        str(dtype).removeprefix("torch."), padded_vocab, time.time() - start,
    )  # fmt: skip
    logger.info("converted %s -> %s", hf_dir, summary)
    return summary
