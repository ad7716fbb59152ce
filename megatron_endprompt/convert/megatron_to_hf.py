"""Megatron dist checkpoint of our model (converted or trained, any TP/PP) -> HF LLaMA dir.

The checkpoint is read through the model's own sharded state dict (built on the meta device, so the
model itself costs no memory), unpacked with the key table and written as size-bounded safetensors shards;
megatron tensors are released as they are unpacked, so the peak memory is about one copy of the model. config.json is written in the dialect recorded at import
(`endprompt_source.json`), v4 when unknown, and the tokenizer/generation files kept at import are copied back.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_endprompt.convert import key_map, megatron_io
from megatron_endprompt.convert.errors import ConversionError
from megatron_endprompt.convert.hf_config import DIALECTS, HFSource, build_hf_config, read_hf_config
from megatron_endprompt.convert.hf_io import DEFAULT_MAX_SHARD_BYTES, write_hf_shards
from megatron_endprompt.convert.hf_to_megatron import ConversionSummary, split_factory
from megatron_endprompt.convert.staging import check_output_dir, refuse_overwriting_input, staged_dir
from megatron_endprompt.model.config import ModelConfig

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _groups(sharded_sd: dict) -> list[list[str]]:
    """State-dict names grouped for loading: embedding, each layer, then final norm and output."""
    first, last, layers = [], [], {}
    for name in sharded_sd:
        if name.endswith("_extra_state"):
            continue
        found = key_map.match(name)
        if found is None:
            raise ConversionError(f"checkpoint tensor {name} has no HF counterpart in convert/key_map.py")
        rule, layer = found
        if layer is not None:
            layers.setdefault(layer, []).append(name)
        else:
            (first if rule.kind == "vocab" and "embedding" in name else last).append(name)
    return [first, *(layers[i] for i in sorted(layers)), last]


def _materialise(sharded_sd: dict, name: str, metadata: dict) -> None:
    """Give a meta-device sharded entry real (empty) buffers with the checkpoint's dtype.

    A ShardedTensorFactory (SwiGLU fc1) is replaced by its parts, each with its own buffer, so that the
    load fills them in place instead of concatenating into a second copy.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    item = sharded_sd[name]
    parts = split_factory(item) if isinstance(item, ShardedTensorFactory) else [item]
    for part in parts:
        stored = metadata.get(part.key)
        if stored is None:
            raise ConversionError(f"checkpoint has no tensor {part.key!r} that the model needs")
        if not part.allow_shape_mismatch and tuple(stored.global_shape) != tuple(part.global_shape):
            raise ConversionError(
                f"checkpoint tensor {part.key} has shape {list(stored.global_shape)}, but "
                f"{megatron_io.MODEL_JSON} implies {list(part.global_shape)}"
            )
        part.data = torch.empty(tuple(part.local_shape), dtype=stored.dtype)
        part.dtype = stored.dtype
    sharded_sd[name] = parts if isinstance(item, ShardedTensorFactory) else item


def _iter_hf_tensors(
    ckpt: Path, cfg: ModelConfig, sharded_sd: dict, metadata: dict, dtype: torch.dtype | None, progress: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs; each megatron tensor is released as soon as it is unpacked.

    The whole model is loaded in one `dist_checkpointing.load` call: in a one-rank world megatron-core
    0.16.1 cannot load a subset of the stacked per-layer tensors (its legacy torch ShardedTensor path
    counts the other layers' shards as local), so loading is one copy of the model; the HF shards then
    replace the released tensors.
    """
    from tqdm import tqdm

    groups = _groups(sharded_sd)
    for group in groups:
        for name in group:
            _materialise(sharded_sd, name, metadata)
    wanted = {name: sharded_sd[name] for group in groups for name in group}
    loaded = megatron_io.load_dist_checkpoint(wanted, ckpt)
    del wanted
    for group in tqdm(groups, desc="megatron->hf", unit="group", disable=not progress):
        for name in group:
            rule, layer = key_map.match(name)
            tensor = loaded.pop(name)
            sharded_sd[name] = None
            # A split factory comes back as its parts, already in HF order (gate, up).
            hf_tensors = tensor if isinstance(tensor, list) else key_map.to_hf(rule, tensor, cfg)
            del tensor
            for hf_name, t in zip(key_map.hf_names(rule, layer), hf_tensors, strict=True):
                yield hf_name, t if dtype is None else t.to(dtype)
            del hf_tensors


def export_source(ckpt: Path, reference: str | Path | None = None) -> tuple[HFSource, list[Path]]:
    """config.json details (dialect, token ids, ...) and tokenizer/generation files for an export.

    From `reference` when given (a converted megatron dir with `endprompt_source.json`, or a HF dir),
    else from the checkpoint itself (conversions record them; training checkpoints do not: v4, no files).
    """
    ref = Path(reference) if reference is not None else ckpt
    if (ref / megatron_io.SOURCE_JSON).is_file():
        assets = ref / megatron_io.HF_ASSETS_DIR
        files = sorted(assets.iterdir()) if assets.is_dir() else []
        return HFSource.from_dict(megatron_io.read_source_json(ref).get("hf")), files
    if reference is None:
        return HFSource(), []
    if not (ref / "config.json").is_file():
        raise ConversionError(f"--hf-reference: {ref} has neither {megatron_io.SOURCE_JSON} nor config.json")
    return read_hf_config(ref)[1], megatron_io.hf_asset_files(ref)


def megatron_to_hf(
    megatron_dir: str | Path,
    hf_dir: str | Path,
    *,
    dialect: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    hf_reference: str | Path | None = None,
    progress: bool = False,
) -> ConversionSummary:
    """Export a megatron checkpoint dir (or a training save root: `latest` is followed) to a HF dir.

    dialect: config.json RoPE dialect (`v4` or `v5`); default: the one recorded at import, else v4.
    dtype: `float32`, `bfloat16` or `float16`; default: the dtype stored in the checkpoint.
    hf_reference: where config.json extras and tokenizer files come from (see `export_source`); use the
    HF dir or the converted dir a training run started from when exporting a training checkpoint.
    """
    start = time.time()
    megatron_io.require_single_process("megatron-to-hf")
    if overwrite:
        inputs = {"--megatron-dir": megatron_dir, "--hf-reference": hf_reference}
        refuse_overwriting_input(hf_dir, "--hf-dir", inputs)
    ckpt = megatron_io.resolve_checkpoint_dir(megatron_dir)
    cfg = megatron_io.read_model_json(ckpt)
    source, assets = export_source(ckpt, hf_reference)
    if dialect is not None:
        if dialect not in DIALECTS:
            raise ConversionError(f"--hf-dialect: unknown dialect {dialect!r}; choose one of {DIALECTS}")
        source = dataclasses.replace(source, dialect=dialect)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype: unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    metadata = megatron_io.checkpoint_metadata(ckpt)
    prefix = megatron_io.checkpoint_prefix(metadata)
    check_output_dir(hf_dir, overwrite, "--hf-dir")

    model = megatron_io.build_model(cfg, torch.float32, meta=True)
    sharded_sd = model.sharded_state_dict(prefix=prefix)
    stored_dtype = metadata[prefix + "embedding.word_embeddings.weight"].dtype
    out_dtype = DTYPES[dtype] if dtype else stored_dtype
    numel = 0

    def counted() -> Iterator[tuple[str, torch.Tensor]]:
        nonlocal numel
        for name, t in _iter_hf_tensors(ckpt, cfg, sharded_sd, metadata, out_dtype, progress):
            numel += t.numel()
            yield name, t

    with staged_dir(hf_dir, overwrite, "--hf-dir") as tmp:
        files = write_hf_shards(tmp, counted(), max_shard_bytes)
        dtype_name = str(out_dtype).removeprefix("torch.")
        megatron_io.write_json(tmp / "config.json", build_hf_config(cfg, source, torch_dtype=dtype_name))
        for path in assets:
            shutil.copy2(path, tmp / path.name)
    summary = ConversionSummary(
        str(Path(hf_dir).absolute()), len(key_map.expected_hf_shapes(cfg)), numel, dtype_name,
        metadata[prefix + "embedding.word_embeddings.weight"].global_shape[0], time.time() - start,
    )  # fmt: skip
    logger.info("exported %s -> %s (%d files)", ckpt, summary, len(files))
    return summary
