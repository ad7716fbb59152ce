"""One validation pass over a TrainConfig, before any compute. Every message names the flag to change."""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_endprompt.checkpoint_layout import MODEL_CONFIG_FILE
from megatron_endprompt.model.config import ARCHITECTURE_FIELDS, ModelConfig
from megatron_endprompt.model.split import SplitNames, split_problems
from megatron_endprompt.model.te_choice import te_unusable_reason

if TYPE_CHECKING:
    from megatron_endprompt.training.config import TrainConfig


class ConfigError(ValueError):
    """A TrainConfig that cannot run; the message names the flag(s) to change."""


def validate_config(cfg: TrainConfig, check_environment: bool = True) -> None:
    """Raise ConfigError listing every problem found (one per line), each naming its flag.

    check_environment=False skips what depends on this machine (Transformer Engine usable: installed and a CUDA
    device present): a dry run on a laptop reports those as warnings (`environment_problems`) instead.
    """
    errors: list[str] = []
    try:
        model = cfg.model_config()
        model.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for check in (
        _check_layout,
        _check_model_split,
        _check_batch,
        _check_precision,
        _check_fp8,
        _check_schedule,
        _check_io,
    ):
        errors.extend(check(cfg, model))
    if check_environment:  # files on this machine: a dry run elsewhere may not have the checkpoint
        errors.extend(_check_init_from_architecture(cfg, model))
        errors.extend(environment_problems(cfg))
    if errors:
        raise ConfigError("invalid training config:\n  " + "\n  ".join(errors))


def environment_problems(cfg: TrainConfig) -> list[str]:
    """Settings this machine cannot run (Transformer Engine missing or without a CUDA device), each naming its
    flag. torch is imported only when a setting needs Transformer Engine."""
    errs = []
    needs_te = cfg.precision.fp8 is not None or cfg.model.use_te is True
    reason = te_unusable_reason() if needs_te else None
    if reason is None:
        return errs
    if cfg.precision.fp8 is not None:
        errs.append(
            f"--precision.fp8 {cfg.precision.fp8} needs Transformer Engine on a CUDA device: {reason}; "
            "drop the flag to train in bf16"
        )
    if cfg.model.use_te is True:
        errs.append(f"--model.use_te true: {reason}; use --model.use_te null (auto) or false")
    return errs


def _check_layout(cfg, model) -> list[str]:
    p, errs = cfg.parallel, []
    for name in ("tensor_parallel", "pipeline_parallel", "context_parallel"):
        if getattr(p, name) < 1:
            errs.append(f"--parallel.{name} must be >= 1, got {getattr(p, name)}")
    if errs:
        return errs
    model_parallel = p.tensor_parallel * p.pipeline_parallel * p.context_parallel
    if cfg.world_size % model_parallel:
        errs.append(
            f"--parallel.tensor_parallel x --parallel.pipeline_parallel x --parallel.context_parallel = "
            f"{model_parallel} does not divide the world size {cfg.world_size}"
        )
    elif p.data_parallel is not None and p.data_parallel != cfg.data_parallel_size:
        errs.append(
            f"--parallel.data_parallel={p.data_parallel} but world size {cfg.world_size} / (TP*PP*CP) "
            f"= {cfg.data_parallel_size}; drop the flag (it is derived) or launch {p.data_parallel * model_parallel} ranks"
        )
    if p.sequence_parallel and p.tensor_parallel == 1:
        errs.append("--parallel.sequence_parallel needs --parallel.tensor_parallel > 1")
    if p.virtual_pipeline_parallel is not None and (
        p.virtual_pipeline_parallel < 2 or p.pipeline_parallel == 1
    ):
        errs.append(
            "--parallel.virtual_pipeline_parallel needs --parallel.pipeline_parallel > 1 and a value >= 2 "
            "(none = no interleaving)"
        )
    if p.context_parallel > 1 and cfg.data.seq_length % (2 * p.context_parallel):
        errs.append(
            f"--data.seq_length ({cfg.data.seq_length}) must be divisible by 2 x --parallel.context_parallel "
            f"(= {2 * p.context_parallel}): context parallelism splits the sequence into 2*CP chunks"
        )
    return errs


PARALLEL_NAMES = SplitNames(
    tp="--parallel.tensor_parallel ({})",
    pp="--parallel.pipeline_parallel ({})",
    vp="--parallel.virtual_pipeline_parallel ({})",
)
"""The recipe's flags in the model-split rule's messages (fields read "model.<field> (value)")."""


def _check_model_split(cfg, model) -> list[str]:
    p = cfg.parallel
    vp = p.virtual_pipeline_parallel
    # sizes below 1 and a virtual size below 2 are _check_layout's to report; here they count as 1 / no interleaving
    errs = split_problems(
        model,
        max(p.tensor_parallel, 1),
        max(p.pipeline_parallel, 1),
        vp if vp is not None and vp >= 1 else None,
        names=PARALLEL_NAMES,
    )
    if cfg.data.seq_length > model.max_position_embeddings:
        errs.append(
            f"--data.seq_length ({cfg.data.seq_length}) exceeds model.max_position_embeddings "
            f"({model.max_position_embeddings}); raise --model.max_position_embeddings"
        )
    r = cfg.recompute
    if r.granularity == "full" and r.num_layers < 1:
        errs.append(f"--recompute.num_layers must be >= 1 with full recompute, got {r.num_layers}")
    return errs


def _check_batch(cfg, model) -> list[str]:
    d, errs = cfg.data, []
    if d.seq_length < 2:
        errs.append(f"--data.seq_length must be >= 2, got {d.seq_length}")
    if d.micro_batch_size < 1:
        errs.append(f"--data.micro_batch_size must be >= 1, got {d.micro_batch_size}")
    else:
        layout_ok = cfg.world_size % _model_parallel(cfg) == 0
        dp = cfg.data_parallel_size if layout_ok else 1
        if d.global_batch_size < 1 or d.global_batch_size % (d.micro_batch_size * dp):
            errs.append(
                f"--data.global_batch_size ({d.global_batch_size}) must be a positive multiple of "
                f"--data.micro_batch_size ({d.micro_batch_size}) x data-parallel size ({dp})"
            )
    if d.cue_loss_weight < 0:
        errs.append(f"--data.cue_loss_weight must be >= 0, got {d.cue_loss_weight}")
    if d.weights is not None and len(d.weights) != len(d.paths):
        errs.append(f"--data.weights has {len(d.weights)} values for {len(d.paths)} --data.paths")
    if d.weights is not None and any(w < 0 for w in d.weights):
        errs.append("--data.weights must be >= 0")
    errs.extend(_check_split(d.split, cfg.logging.eval_interval))
    if d.num_workers < 0:
        errs.append(f"--data.num_workers must be >= 0, got {d.num_workers}")
    return errs


def _model_parallel(cfg) -> int:
    p = cfg.parallel
    return max(p.tensor_parallel, 1) * max(p.pipeline_parallel, 1) * max(p.context_parallel, 1)


def _check_split(split: str, eval_interval: int | None) -> list[str]:
    try:
        parts = [float(x) for x in split.replace("/", ",").split(",")]
    except ValueError:
        return [f"--data.split must look like '98,2,0', got {split!r}"]
    if len(parts) > 3 or any(x < 0 for x in parts) or sum(parts) <= 0 or parts[0] <= 0:
        return [
            f"--data.split must be up to 3 non-negative numbers with a positive train share, got {split!r}"
        ]
    if eval_interval and (len(parts) < 2 or parts[1] <= 0):
        return [
            f"--logging.eval_interval needs a validation share in --data.split (e.g. '98,2,0'), got {split!r}"
        ]
    return []


def _check_precision(cfg, model) -> list[str]:
    pr, errs = cfg.precision, []
    if pr.fp8 is not None and pr.dtype == "fp32":
        errs.append("--precision.fp8 needs --precision.dtype bf16 or fp16")
    if pr.fp8 is not None and cfg.model.use_te is False:
        errs.append("--precision.fp8 needs the Transformer Engine layer spec; remove --model.use_te false")
    if pr.loss_scale is not None and pr.dtype != "fp16":
        errs.append("--precision.loss_scale only applies to --precision.dtype fp16")
    return errs


FP8_DELAYED_ONLY = ("fp8_amax_history_len", "fp8_amax_compute_algo", "fp8_margin")
"""Settings only megatron's delayed-scaling recipe reads (TEDelayedScaling); other recipes ignore them."""
FP8_BF16_LAYERS = ("fp8_bf16_layers_at_start", "fp8_bf16_layers_at_end")


def _changed_fp8_fields(precision) -> list[str]:
    """`fp8_*` fields set away from their defaults (a setting that would have no effect is refused)."""
    return [
        f.name
        for f in dataclasses.fields(precision)
        if f.name.startswith("fp8_") and getattr(precision, f.name) != f.default
    ]


def _check_fp8(cfg, model) -> list[str]:
    pr, errs = cfg.precision, []
    changed = _changed_fp8_fields(pr)
    if pr.fp8 is None:
        return [
            f"--precision.{name} needs --precision.fp8 (e4m3 or hybrid); drop it or enable FP8"
            for name in changed
        ]
    if pr.fp8_amax_history_len < 1:
        errs.append(f"--precision.fp8_amax_history_len must be >= 1, got {pr.fp8_amax_history_len}")
    if pr.fp8_margin < 0:
        errs.append(f"--precision.fp8_margin must be >= 0, got {pr.fp8_margin}")
    if pr.fp8_recipe != "delayed":
        errs.extend(
            f"--precision.{name} only applies to --precision.fp8_recipe delayed (got {pr.fp8_recipe})"
            for name in FP8_DELAYED_ONLY
            if name in changed
        )
    errs.extend(_check_fp8_bf16_layers(cfg, model))
    return errs


def _check_fp8_bf16_layers(cfg, model) -> list[str]:
    """The bounds megatron-core 0.16.1 enforces in TransformerConfig.__post_init__, named by our flags, plus one
    of ours: at least one layer must stay in FP8."""
    pr, errs = cfg.precision, []
    counts = {name: getattr(pr, name) for name in FP8_BF16_LAYERS}
    if not any(counts.values()):
        return []
    if pr.fp8_recipe == "delayed":
        errs.append(
            "--precision.fp8_bf16_layers_at_start / --precision.fp8_bf16_layers_at_end need "
            "--precision.fp8_recipe tensorwise, blockwise or mxfp8 (megatron-core keeps no BF16 layers under "
            "delayed scaling)"
        )
    per_stage = model.num_layers // max(cfg.parallel.pipeline_parallel, 1)
    for name, count in counts.items():
        if not 0 <= count <= per_stage:
            errs.append(
                f"--precision.{name} must be in [0, model.num_layers / --parallel.pipeline_parallel "
                f"= {per_stage}], got {count}"
            )
    if sum(counts.values()) >= model.num_layers:  # ours, not megatron's: FP8 would run on no layer at all
        errs.append(
            "--precision.fp8_bf16_layers_at_start + --precision.fp8_bf16_layers_at_end "
            f"({sum(counts.values())}) must stay below model.num_layers ({model.num_layers}); to train "
            "without FP8, drop --precision.fp8"
        )
    return errs


def _check_schedule(cfg, model) -> list[str]:
    o, t, errs = cfg.optimizer, cfg.training, []
    if (t.train_steps is None) == (t.train_samples is None):
        errs.append("set exactly one of --training.train_steps and --training.train_samples")
    elif cfg.train_steps < 1:
        errs.append("--training.train_steps / --training.train_samples must give at least one step")
    if not o.lr > 0:
        errs.append(f"--optimizer.lr must be > 0, got {o.lr}")
    if not 0 <= o.min_lr <= o.lr:
        errs.append(f"--optimizer.min_lr ({o.min_lr}) must be in [0, --optimizer.lr ({o.lr})]")
    if o.warmup_steps < 0:
        errs.append(f"--optimizer.warmup_steps must be >= 0, got {o.warmup_steps}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(o, name) < 1:
            errs.append(f"--optimizer.{name} must be in [0, 1), got {getattr(o, name)}")
    if o.adam_eps <= 0 or o.weight_decay < 0 or o.clip_grad < 0:
        errs.append(
            "--optimizer.adam_eps must be > 0, --optimizer.weight_decay and --optimizer.clip_grad >= 0"
        )
    if o.overlap_param_gather and not o.use_distributed_optimizer:
        errs.append("--optimizer.overlap_param_gather needs --optimizer.use_distributed_optimizer")
    return errs


def _check_io(cfg, model) -> list[str]:
    c, lg, errs = cfg.checkpoint, cfg.logging, []
    if cfg.training.exit_signal is not None and cfg.training.exit_signal not in signal.Signals.__members__:
        errs.append(
            f"--training.exit_signal: unknown signal {cfg.training.exit_signal!r} (e.g. SIGTERM, SIGUSR1)"
        )
    if c.save_interval is not None and c.save_interval < 1:
        errs.append(f"--checkpoint.save_interval must be >= 1, got {c.save_interval}")
    if c.save_interval is not None and not c.save:
        errs.append("--checkpoint.save_interval needs --checkpoint.save (a directory)")
    if c.keep_last is not None and c.keep_last < 1:
        errs.append(f"--checkpoint.keep_last must be >= 1 or none, got {c.keep_last}")
    if lg.log_interval < 1:
        errs.append(f"--logging.log_interval must be >= 1, got {lg.log_interval}")
    if lg.eval_interval is not None and lg.eval_interval < 1:
        errs.append(f"--logging.eval_interval must be >= 1 or none, got {lg.eval_interval}")
    if lg.eval_steps < 1:
        errs.append(f"--logging.eval_steps must be >= 1, got {lg.eval_steps}")
    if lg.peak_tflops is not None and lg.peak_tflops <= 0:
        errs.append(f"--logging.peak_tflops must be > 0, got {lg.peak_tflops}")
    if not cfg.data.paths and not cfg.data.mock:
        errs.append("--data.paths is empty; give dataset prefixes (or --data.mock true for synthetic data)")
    return errs


def _check_init_from_architecture(cfg, model) -> list[str]:
    """The weights of `--checkpoint.init_from` must fit the configured model; name the flag that disagrees."""
    path = Path(cfg.checkpoint.init_from or "") / MODEL_CONFIG_FILE
    if not cfg.checkpoint.init_from or not path.is_file():
        return []  # a missing dir is reported when the weights are read
    saved = ModelConfig.from_dict(json.loads(path.read_text()))
    if cfg.model.preset is not None:
        base_flag = f"--model.preset {cfg.model.preset}"
    else:
        base_flag = f"--model.config_file {cfg.model.config_file}" if cfg.model.config_file else "--model"
    errs = []
    for name in ARCHITECTURE_FIELDS:
        mine, theirs = getattr(model, name), getattr(saved, name)
        if mine != theirs:
            flag = f"--model.{name}" if name in cfg.model.overrides else base_flag
            errs.append(
                f"{flag}: {name} = {mine}, but --checkpoint.init_from {cfg.checkpoint.init_from} was saved with "
                f"{theirs}; drop {flag.split()[0]} to take the architecture from {path}"
            )
    return errs


def data_identity(cfg: TrainConfig) -> dict:
    """What fixes the training order besides the position: stored with every checkpoint, compared on resume."""
    d = cfg.data
    return {
        "global_batch_size": d.global_batch_size,
        "data_seed": d.seed,
        "data_paths": [Path(p).name for p in d.paths],  # the order is keyed by file names, not folders
        "data_weights": d.weights,
    }


def resume_data_problems(cfg: TrainConfig, saved: dict) -> list[str]:
    """What fixes the data order and differs from the checkpoint's run (`saved`: its `data_identity`), each
    naming its flag. Keys the checkpoint lacks (older checkpoints) are not compared."""
    flags = {
        "global_batch_size": "--data.global_batch_size",
        "data_seed": "--data.seed",
        "data_paths": "--data.paths",
        "data_weights": "--data.weights",
    }
    now = data_identity(cfg)
    return [
        f"{flag} was {saved[key]!r} in the checkpoint's run, this run has {now[key]!r}"
        for key, flag in flags.items()
        if key in saved and saved[key] != now[key]
    ]
