"""Save and restore the whole training state with megatron-core dist_checkpointing.

Directory layout (format version 1; `checkpoint_io` makes it crash-safe):

    <save>/latest                      text: name of the newest complete checkpoint, written last
    <save>/iter_0000100/
        metadata.json, .metadata, *.distcp, common.pt
                                       the MODEL: a torch_dist dist checkpoint of model.sharded_state_dict()
                                       (the same layout `convert.hf_to_megatron` writes, so `load_model` and
                                       our weights-only load read both); resharded freely over TP/PP
        endprompt_model.json           ModelConfig.to_dict()
        optimizer/                     dist checkpoint of optimizer.sharded_state_dict(model keys); the
                                       distributed optimizer uses 'dp_reshardable' (TP/PP layout fixed)
        rng/rank_00000.safetensors ... per-rank RNG states (python, numpy, torch CPU/CUDA, megatron tracker),
                                       no pickle (checkpoint_rng)
        train_state.json               iteration, lr_step, consumed_samples, saved layout, `extra`
        train_config.json              the TrainConfig (`to_dict()`) when the engine has one
        checkpoint_complete            manifest (size + CRC32 of every file), written last, before the
                                       directory is renamed into place; verified on load

Every rank must call `save_checkpoint` / `load_checkpoint` (collective). A shared filesystem is assumed. Rank 0
alone touches the directory protocol and reads the files for verification; its errors reach every rank.
Loading a megatron-core dist checkpoint unpickles parts of it (torch DCP `.metadata`, `common.pt`): load only
checkpoints you trust (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_endprompt import checkpoint_layout
from megatron_endprompt.checkpoint_layout import MODEL_CONFIG_FILE
from megatron_endprompt.model.config import ARCHITECTURE_FIELDS, ModelConfig
from megatron_endprompt.model.portable_state import load_model_state, load_sharded_model_state
from megatron_endprompt.parallel.cpu_support import cpu_safe_checkpointing
from megatron_endprompt.training import checkpoint_rng
from megatron_endprompt.training.checkpoint_io import (
    COMPLETE_MARKER,
    CheckpointError,
    begin_save,
    checkpoint_name,
    commit_save,
    find_latest,
    iteration_of,
    list_checkpoints,
    verify_checkpoint,
)
from megatron_endprompt.training.checkpoint_manifest import CorruptCheckpointError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TRAIN_STATE_FILE = "train_state.json"
TRAIN_CONFIG_FILE = "train_config.json"
OPTIMIZER_DIR = "optimizer"
RNG_DIR = "rng"
DIST_OPT_SHARDING = "dp_reshardable"
"""The only DistributedOptimizer format that saved and loaded on megatron-core 0.16.1 (see MEGATRON_CORE_NOTES)."""

__all__ = ["save_checkpoint", "load_checkpoint", "find_latest", "resolve_checkpoint_dir"]


def save_checkpoint(
    engine,
    save_dir: str | os.PathLike,
    iteration: int,
    consumed_samples: int,
    extra: dict[str, Any] | None = None,
    *,
    keep_last: int | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Path:
    """Write the engine's full state as `<save_dir>/iter_XXXXXXX` and point `latest` at it (collective).

    `extra` must be JSON-serialisable (e.g. the data loader position). `before_commit` runs on every rank once
    everything is written but before the directory is published (fault-injection tests kill the process there).
    """
    from megatron.core import dist_checkpointing

    rank0 = dist.get_rank() == 0
    engine.sync_params()
    _check_finite_weights(engine, Path(save_dir) / checkpoint_name(iteration))
    _on_rank0(lambda: begin_save(save_dir, iteration))
    tmp = Path(save_dir) / (checkpoint_name(iteration) + ".tmp")
    with cpu_safe_checkpointing():
        dist_checkpointing.save(_model_sharded_state_dict(engine), str(tmp), _parallel_save_strategy())
    if rank0:
        (tmp / OPTIMIZER_DIR).mkdir()
        (tmp / RNG_DIR).mkdir()
    dist.barrier()
    opt_sd = engine.optimizer.sharded_state_dict(
        _model_sharded_state_dict(engine), is_loading=False, metadata=_optimizer_metadata(engine)
    )
    with cpu_safe_checkpointing():
        dist_checkpointing.save(opt_sd, str(tmp / OPTIMIZER_DIR), _parallel_save_strategy())
    checkpoint_rng.write(_rng_file(tmp), checkpoint_rng.capture())
    if rank0:
        _write_json(tmp / MODEL_CONFIG_FILE, engine.model_config.to_dict())
        _write_json(tmp / TRAIN_STATE_FILE, _train_state(engine, iteration, consumed_samples, extra))
        if getattr(engine, "cfg", None) is not None:
            _write_json(tmp / TRAIN_CONFIG_FILE, engine.cfg.to_dict())
    dist.barrier()
    if before_commit is not None:
        before_commit()
    _on_rank0(lambda: commit_save(save_dir, iteration, keep_last))
    final = Path(save_dir) / checkpoint_name(iteration)
    logger.info("saved checkpoint %s", final)
    return final


def load_checkpoint(
    engine, load_dir: str | os.PathLike, *, weights_only: bool = False, fallback_to_previous: bool = False
) -> dict[str, Any]:
    """Restore the engine from a checkpoint dir, or from the latest one under a save dir (collective).

    weights_only: load only the model weights (fine-tuning from an HF-converted checkpoint, or changing the
    TP/PP layout of a distributed-optimizer run); the optimizer starts fresh and the counters stay at 0.
    fallback_to_previous: when the newest checkpoint fails verification, load the newest older one that passes.
    Returns the train state (`iteration`, `consumed_samples`, `extra`, ..., and `path`); for weights-only
    loads only `path` and whatever train state the directory has.
    """
    path = _on_rank0(lambda: select_checkpoint(load_dir, fallback_to_previous))
    _check_model_config(engine.model_config, path)
    state = _read_json(path / TRAIN_STATE_FILE) if (path / TRAIN_STATE_FILE).is_file() else {}
    if not weights_only and not state:
        raise ValueError(
            f"--checkpoint.load: {path} holds weights only (no {TRAIN_STATE_FILE}); use it as "
            "checkpoint.init_from instead"
        )
    if not weights_only:
        _check_same_optimizer_layout(engine, state, path)  # before touching anything
    with _naming_the_checkpoint(path):
        _load_model(engine, path)
    if weights_only:
        engine.optimizer.reload_model_params()  # fp32 master weights follow the loaded model weights
        logger.info("loaded weights from %s", path)
        return {**state, "path": str(path)}
    with _naming_the_checkpoint(path / OPTIMIZER_DIR):
        _load_optimizer(engine, path)
    engine.iteration = int(state["iteration"])
    engine.lr_step = int(state["lr_step"])
    engine.consumed_samples = int(state["consumed_samples"])
    _load_rng(path, state)
    logger.info("resumed from %s at iteration %d", path, engine.iteration)
    return {**state, "path": str(path)}


def resolve_checkpoint_dir(load_dir: str | os.PathLike) -> Path:
    """A checkpoint directory itself, or the latest complete one under a save directory
    (`checkpoint_layout.resolve_checkpoint_dir`); FileNotFoundError naming the flag when there is none."""
    path = checkpoint_layout.resolve_checkpoint_dir(load_dir)
    if path is None:
        raise FileNotFoundError(f"--checkpoint.load: no complete checkpoint in {load_dir}")
    return path


def select_checkpoint(load_dir: str | os.PathLike, fallback_to_previous: bool = False) -> Path:
    """The directory to load: `resolve_checkpoint_dir`, verified against its manifest. A corrupt one raises
    CorruptCheckpointError naming the directory and the file, or with `fallback_to_previous` (save dirs only)
    gives way to the newest older complete checkpoint that verifies (a warning names both)."""
    path = resolve_checkpoint_dir(load_dir)
    try:
        _verify(path)
        return path
    except CorruptCheckpointError as err:
        if not fallback_to_previous or path == Path(load_dir):
            raise CorruptCheckpointError(
                f"{err}; to resume from the previous complete iteration instead, rerun with "
                "--checkpoint.fallback_to_previous true (newer iterations are then renamed to *.aside)"
            ) from None
        bad = err
    older = [p for p in list_checkpoints(path.parent) if iteration_of(p) < iteration_of(path)]
    for candidate in reversed(older):
        try:
            _verify(candidate)
        except CorruptCheckpointError as err:
            logger.warning("%s", err)
            continue
        logger.warning("%s; --checkpoint.fallback_to_previous: resuming from %s instead", bad, candidate)
        return candidate
    raise CorruptCheckpointError(f"{bad}, and no older complete checkpoint under {path.parent} verifies")


def _verify(path: Path) -> None:
    if (path / COMPLETE_MARKER).is_file():  # converted dirs (hf_to_megatron) have no marker to check
        verify_checkpoint(path)


@contextlib.contextmanager
def _naming_the_checkpoint(path: Path) -> Iterator[None]:
    """Turn a failure deep in torch / megatron while reading `path` into one line that names it."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any read failure: name the directory, keep the cause chained
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {first}); if it is damaged, resume "
            "from an earlier one with --checkpoint.fallback_to_previous true"
        ) from err


def _on_rank0(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only (directory protocol, verification) and give every rank its result or its error:
    an error on rank 0 alone would leave the others waiting at the next collective."""
    box: list[Any] = [None, None]
    if dist.get_rank() == 0:
        try:
            box[0] = fn()
        except (ValueError, OSError) as err:
            box[1] = err
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


def _check_finite_weights(engine, destination: Path) -> None:
    """Refuse to save a model holding NaN/Inf (a poisoned checkpoint would become `latest`); collective."""
    from megatron_endprompt.training.metrics import NonFiniteLossError

    bad = [
        name
        for chunk in engine.unwrapped_model()
        for name, param in chunk.named_parameters()
        if not bool(torch.isfinite(param.detach()).all())
    ]
    flag = torch.tensor([float(len(bad))], device=engine.device)
    dist.all_reduce(flag)
    if flag.item():
        where = f" (this rank: {bad[:3]})" if bad else ""
        raise NonFiniteLossError(
            f"the model holds non-finite weights{where}; not saving {destination}, `latest` still names the "
            "last good checkpoint. Lower --optimizer.lr or set --optimizer.clip_grad, and resume"
        )


# ---------------------------------------------------------------------- model and optimizer


def _model_sharded_state_dict(engine) -> dict:
    """The model's sharded state dict; virtual-pipeline chunks are nested under `chunk<i>`.

    Nesting changes only the Python dict: the stored tensor keys are the chunks' own (global) keys, so the
    checkpoint is identical to a single-chunk one and loads at any layout.
    """
    chunks = engine.unwrapped_model()
    if len(chunks) == 1:
        return chunks[0].sharded_state_dict()
    return {f"chunk{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


def _load_model(engine, path: Path) -> None:
    """The model's weights, from a checkpoint written under either layer spec (`model.portable_state`)."""
    with cpu_safe_checkpointing():
        state = load_sharded_model_state(_model_sharded_state_dict(engine), path)
    chunks = engine.unwrapped_model()
    for i, chunk in enumerate(chunks):
        load_model_state(chunk, state if len(chunks) == 1 else state[f"chunk{i}"])


def _parallel_save_strategy():
    """torch_dist writer whose shards are spread over the DP x CP replicas (each writes a part).

    Without it, the first data-parallel replica of every model-parallel shard writes everything.
    """
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    return FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(), group)


def _optimizer_metadata(engine) -> dict:
    if engine.cfg.optimizer.use_distributed_optimizer:
        return {"distrib_optim_sharding_type": DIST_OPT_SHARDING}
    return {}


def _load_optimizer(engine, path: Path) -> None:
    from megatron.core import dist_checkpointing

    _ensure_optimizer_state(engine.optimizer)
    opt_sd = engine.optimizer.sharded_state_dict(
        _model_sharded_state_dict(engine), is_loading=True, metadata=_optimizer_metadata(engine)
    )
    with cpu_safe_checkpointing():
        state = dist_checkpointing.load(opt_sd, str(path / OPTIMIZER_DIR))
    # no_grad: the distributed optimizer copies into leaf tensors that require grad.
    with torch.no_grad(), cpu_safe_checkpointing():
        engine.optimizer.load_state_dict(state)
    if engine.cfg.optimizer.use_distributed_optimizer:
        _restore_adam_steps(engine.optimizer)


def _ensure_optimizer_state(optimizer) -> None:
    """Give a fresh torch Adam zero moments and step 0 (overwritten by the load).

    Without apex/TE, DistributedOptimizer.state_dict() reads `step` from the torch optimizer's state, which
    torch creates lazily at the first step: building the sharded state dict of a fresh optimizer fails
    (`assert len(steps) == 1`, distrib_optimizer.py:642).
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Adam | torch.optim.AdamW) or len(inner.state):
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                inner.state[p] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                }


def _restore_adam_steps(optimizer) -> None:
    """Re-apply the step count after a DistributedOptimizer load (megatron-core 0.16.1 without apex/TE).

    Its load_state_dict sets torch Adam's per-parameter `step` from the param groups, but the dp_reshardable
    parameter state loaded afterwards overwrites `step` with the placeholder of the fresh optimizer, which
    would restart Adam's bias correction. The param groups still hold the saved step.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Adam | torch.optim.AdamW):
            continue
        for group in inner.param_groups:
            if "step" not in group:
                continue
            for p in group["params"]:
                if p in inner.state:
                    inner.state[p]["step"] = torch.tensor(float(group["step"]))


def _layout() -> dict[str, int]:
    from megatron.core import parallel_state as ps

    return {
        "tensor_parallel": ps.get_tensor_model_parallel_world_size(),
        "pipeline_parallel": ps.get_pipeline_model_parallel_world_size(),
        "context_parallel": ps.get_context_parallel_world_size(),
        "data_parallel": ps.get_data_parallel_world_size(),
        "world_size": dist.get_world_size(),
    }


def _train_state(engine, iteration: int, consumed_samples: int, extra: dict | None) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "lr_step": engine.lr_step,
        "consumed_samples": consumed_samples,
        "layout": _layout(),
        "use_distributed_optimizer": bool(engine.cfg.optimizer.use_distributed_optimizer),
        "dtype": engine.cfg.precision.dtype,
        "extra": extra or {},
    }


def _check_same_optimizer_layout(engine, state: dict, path: Path) -> None:
    """The distributed optimizer's dp_reshardable state only reshards over DP: refuse other changes."""
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {state.get('format_version')} is not {FORMAT_VERSION}")
    if state.get("dtype") != engine.cfg.precision.dtype:
        raise ValueError(
            f"--precision.dtype: {path} holds {state.get('dtype')} optimizer state, the run uses "
            f"{engine.cfg.precision.dtype}; keep the dtype, or load weights only (checkpoint.init_from)"
        )
    saved_dist = state.get("use_distributed_optimizer", False)
    if saved_dist != bool(engine.cfg.optimizer.use_distributed_optimizer):
        raise ValueError(
            f"--optimizer.use_distributed_optimizer: {path} was saved with {saved_dist}; keep it, or resume "
            "weights only (checkpoint.init_from)"
        )
    if saved_dist:
        now, saved = _layout(), state["layout"]
        keys = ("tensor_parallel", "pipeline_parallel", "context_parallel")
        if any(now[k] != saved[k] for k in keys):
            raise ValueError(
                f"--parallel: {path} holds distributed-optimizer state for (tp, pp, cp) = "
                f"{tuple(saved[k] for k in keys)}, which reshards over data-parallel ranks only; resume at that "
                "layout, or load weights only (checkpoint.init_from)"
            )


def _check_model_config(current: ModelConfig, path: Path) -> None:
    """Weight shapes must agree; RoPE settings may differ (context extension changes them on purpose)."""
    file = path / MODEL_CONFIG_FILE
    if not file.is_file():
        logger.warning("%s has no %s; cannot check the architecture", path, MODEL_CONFIG_FILE)
        return
    saved = ModelConfig.from_dict(_read_json(file))
    diff = {
        k: (getattr(saved, k), getattr(current, k))
        for k in ARCHITECTURE_FIELDS
        if getattr(saved, k) != getattr(current, k)
    }
    if diff:
        raise ValueError(f"--model: {path} was saved for another architecture; (saved, configured): {diff}")
    if saved != current:
        logger.info(
            "%s: RoPE / position settings differ from the checkpoint's (expected when extending)", path
        )


# ---------------------------------------------------------------------- RNG


def _rng_file(ckpt_dir: Path) -> Path:
    return ckpt_dir / RNG_DIR / f"rank_{dist.get_rank():05d}{checkpoint_rng.RNG_SUFFIX}"


def _load_rng(path: Path, state: dict) -> None:
    """Restore this rank's RNG streams when the layout is unchanged (otherwise ranks do not correspond)."""
    file = _rng_file(path)
    if state.get("layout") != _layout():
        logger.warning("%s: parallel layout changed; RNG states are not restored", path)
        return
    if not file.is_file():
        logger.warning(
            "%s has no %s (a checkpoint from before pickle-free RNG files: its rank_*.pt is not unpickled, "
            "since unpickling can run code); RNG states are not restored",
            path,
            file.name,
        )
        return
    checkpoint_rng.restore(checkpoint_rng.read(file))


# ---------------------------------------------------------------------- json


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())
