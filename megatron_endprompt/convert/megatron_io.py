"""The megatron side of a checkpoint: sidecar JSON files, `latest` resolution, and the model's sharded state dict.

A megatron checkpoint dir of ours is a megatron-core distributed checkpoint (`torch_dist` backend) whose
tensor keys are exactly those of `EndPromptGPTModel.sharded_state_dict()` (no prefix), plus:
- `endprompt_model.json`: `ModelConfig.to_dict()` and nothing else (training reads it with `from_dict`);
- `endprompt_source.json` (conversions only): where the weights came from and the HF config details
  (dialect, token ids, ...) that the export writes back;
- `hf_assets/` (conversions only): tokenizer and generation files copied from the HF dir.
Because the dist checkpoint stores GLOBAL tensors, it loads at any TP/PP layout; the model defines the
sharding when it loads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from megatron_endprompt import checkpoint_layout
from megatron_endprompt.convert.errors import ConversionError
from megatron_endprompt.model.config import ModelConfig
from megatron_endprompt.parallel.cpu_support import cpu_safe_checkpointing

logger = logging.getLogger(__name__)

MODEL_JSON = checkpoint_layout.MODEL_CONFIG_FILE
"""`endprompt_model.json`: the one constant of `checkpoint_layout`, under the name the converters use."""
SOURCE_JSON = "endprompt_source.json"
HF_ASSETS_DIR = "hf_assets"
_EMBEDDING_KEY = "embedding.word_embeddings.weight"


def write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def read_model_json(ckpt_dir: Path) -> ModelConfig:
    """The ModelConfig of a checkpoint dir (also accepts {"model": {...}} wrappers)."""
    path = Path(ckpt_dir) / MODEL_JSON
    if not path.is_file():
        raise ConversionError(f"--megatron-dir: {ckpt_dir} has no {MODEL_JSON}; is it a checkpoint of ours?")
    data = json.loads(path.read_text())
    if isinstance(data.get("model"), dict):
        data = data["model"]
    try:
        cfg = ModelConfig.from_dict(data)
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{path}: {e}") from None
    return cfg


def read_source_json(ckpt_dir: Path) -> dict:
    """Conversion provenance, or {} for checkpoints written by training."""
    path = Path(ckpt_dir) / SOURCE_JSON
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint dir itself, or for a training save root the iteration dir that training would resume from
    (`checkpoint_layout.resolve_checkpoint_dir`: the same rules for `latest`, the same refusals)."""
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(f"--megatron-dir: {path} is not a directory")
    try:
        found = checkpoint_layout.resolve_checkpoint_dir(path)
    except checkpoint_layout.CheckpointError as err:
        raise ConversionError(f"--megatron-dir: {err}") from None
    return found if found is not None else path  # not a save root: read_model_json names what is missing


def require_single_process(flag: str) -> None:
    """The converters write from one process; refuse a multi-rank launch before anything is written."""
    import os

    import torch.distributed as dist

    world = (
        dist.get_world_size()
        if dist.is_available() and dist.is_initialized()
        else int(os.environ.get("WORLD_SIZE", "1"))
    )
    if world > 1:
        raise ConversionError(
            f"{flag}: run the converter as one process (not under torchrun); world size is {world}"
        )


def ensure_single_process_layout() -> None:
    """torch.distributed + parallel_state with TP=PP=CP=1 (initialised here if nobody did)."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        sizes = (
            ps.get_tensor_model_parallel_world_size(),
            ps.get_pipeline_model_parallel_world_size(),
            ps.get_context_parallel_world_size(),
        )
        if sizes != (1, 1, 1):
            raise ConversionError(
                f"conversion and load_model build an unsharded model, but this process already runs "
                f"tp={sizes[0]} pp={sizes[1]} cp={sizes[2]}; call them from a tp=pp=cp=1 process"
            )
        return
    from megatron_endprompt.parallel.initialize import initialize

    initialize(tp=1, pp=1, cp=1)


def build_model(cfg: ModelConfig, dtype: torch.dtype, meta: bool = False) -> torch.nn.Module:
    """Our GPT model at TP=PP=1 with the local spec; `meta=True` allocates no memory (structure only)."""
    from megatron_endprompt.model.gpt import build_model as _build

    ensure_single_process_layout()
    if not meta:
        return _build(cfg, params_dtype=dtype, use_te=False)
    try:
        with torch.device("meta"):
            return _build(cfg, params_dtype=dtype, use_te=False)
    except Exception as e:  # noqa: BLE001 - any failure: fall back to a real (memory-costly) build
        logger.warning("building the model on the meta device failed (%s); building it on the CPU", e)
        return _build(cfg, params_dtype=dtype, use_te=False)


def save_dist_checkpoint(sharded_sd: dict, ckpt_dir: Path) -> None:
    """`dist_checkpointing.save` (torch_dist backend) into an existing empty dir."""
    from megatron.core import dist_checkpointing

    with cpu_safe_checkpointing():
        dist_checkpointing.save(sharded_sd, str(ckpt_dir))


def load_dist_checkpoint(sharded_sd: dict, ckpt_dir: Path, partial: bool = False) -> dict:
    """`dist_checkpointing.load` of the entries of `sharded_sd`.

    partial: `sharded_sd` holds only some of the model's entries (e.g. one layer of the stacked
    `decoder.layers.*` tensors), so megatron's check that every shard is read must be skipped.
    """
    from megatron.core import dist_checkpointing

    with cpu_safe_checkpointing():
        return dist_checkpointing.load(sharded_sd, str(ckpt_dir), validate_access_integrity=not partial)


def checkpoint_metadata(ckpt_dir: Path) -> dict:
    """{ShardedTensor key: ShardedTensor without data} (global shapes and dtypes) of a dist checkpoint."""
    from megatron.core import dist_checkpointing

    if not (Path(ckpt_dir) / "metadata.json").is_file():
        raise ConversionError(f"--megatron-dir: {ckpt_dir} is not a megatron-core distributed checkpoint")
    return dist_checkpointing.load_tensors_metadata(str(ckpt_dir))


def checkpoint_prefix(metadata: dict) -> str:
    """The prefix the model's keys were saved under ('' for ours), found from the embedding key."""
    hits = [k for k in metadata if k.endswith(_EMBEDDING_KEY)]
    if len(hits) != 1:
        raise ConversionError(f"cannot find exactly one '*{_EMBEDDING_KEY}' in the checkpoint (found {hits})")
    return hits[0][: -len(_EMBEDDING_KEY)]


def hf_asset_files(src: Path, skip: tuple[str, ...] = ("config.json",)) -> list[Path]:
    """Small top-level non-weight files of a HF dir (tokenizer, generation config, ...)."""
    assets = []
    for path in sorted(Path(src).iterdir()):
        is_weight = path.suffix in (".safetensors", ".bin", ".pt", ".pth") or path.name.endswith(
            ".index.json"
        )
        if path.is_file() and not is_weight and path.name not in skip and path.stat().st_size < 512 * 1024**2:
            assets.append(path)
    return assets


def copy_hf_assets(src: Path, dst: Path) -> list[str]:
    """Copy `hf_asset_files(src)` into `dst` (created when there is something to copy); returns the names."""
    import shutil

    files = hf_asset_files(src)
    for path in files:
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst / path.name)
    return [p.name for p in files]
