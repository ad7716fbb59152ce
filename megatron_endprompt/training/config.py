"""Training configuration: typed sections, YAML recipes with command-line overrides, one validation pass.

A recipe is a YAML file whose top-level keys are the sections below (`model`, `parallel`, `precision`, `recompute`,
`optimizer`, `data`, `training`, `checkpoint`, `logging`, `debug`). `load_config(path, overrides)` reads it, applies
`--section.key value` / `--key value` overrides (see `overrides.py`) and returns a `TrainConfig`.
`TrainConfig.validate(world_size)` checks every cross-field constraint before any compute; each error names the flag.

torch and megatron are not imported here: the CLI's --help and --dry-run stay cheap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_endprompt.checkpoint_layout import MODEL_CONFIG_FILE
from megatron_endprompt.model.config import ModelConfig, RopeScaling, get_preset
from megatron_endprompt.training.overrides import apply_overrides, build_section, convert, read_recipe

logger = logging.getLogger(__name__)


@dataclass
class ModelSection:
    """Which architecture to train. Keys of a recipe's `model:` block that are ModelConfig fields (e.g.
    `max_position_embeddings`, `rope_scaling`) are collected into `overrides`."""

    preset: str | None = None
    """Preset name from `model.config.PRESETS` (e.g. `llama3-8b`, `tiny`). None: read `config_file`, or the
    `endprompt_model.json` of `checkpoint.init_from` / `checkpoint.load`. A `--checkpoint.init_from` given on the
    command line overrides the recipe's preset (or config_file) with the checkpoint's architecture."""
    config_file: str | None = None
    """Path to an `endprompt_model.json` (ModelConfig.to_dict()); an alternative to `preset`."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields replacing the base config's; `rope_scaling` is merged key by key."""
    use_te: bool | None = None
    """Transformer Engine layer spec: True requires it, False uses the local spec + SDPA attention, None = auto."""
    attention_backend: Literal["auto", "cudnn", "flash", "efficient", "math"] = "auto"
    """SDPA kernel of the local spec's attention (`auto`: PyTorch chooses; see docs/performance.md). On CPU,
    `cudnn` / `efficient` fall back to `auto` with a logged note. No effect on Transformer Engine layers."""
    rope_fusion: Literal["auto", "none", "triton", "compile"] = "auto"
    """Per-token RoPE application: `none` (megatron's unfused ops), `triton` (one fused kernel, CUDA), `compile`
    (torch.compile of the unfused maths); `auto` = `none` until the fused kernel is verified on a GPU."""
    ce_chunk_size: int = 0
    """Tokens per chunk of the chunked output layer + cross entropy (the [tokens, vocab] fp32 logits are never
    materialised; backward recomputes each chunk); 0 = off (megatron's vocab-parallel CE). E.g. 4096 for 128K
    vocabularies."""

    def __post_init__(self) -> None:
        if not isinstance(self.ce_chunk_size, int) or self.ce_chunk_size < 0:
            raise ValueError(
                f"--model.ce_chunk_size must be an integer >= 0 (0 = off), got {self.ce_chunk_size!r}"
            )


@dataclass
class ParallelSection:
    """Parallel layout. The data-parallel size is derived: world_size / (tensor * pipeline * context)."""

    tensor_parallel: int = 1
    """Tensor-model-parallel size (TP); must divide attention heads and query groups."""
    pipeline_parallel: int = 1
    """Pipeline-model-parallel size (PP); must divide the number of layers."""
    context_parallel: int = 1
    """Context-parallel size (CP); the sequence is split into 2*CP chunks (load-balanced causal attention)."""
    virtual_pipeline_parallel: int | None = None
    """Model chunks per pipeline rank for the interleaved 1F1B schedule (>= 2; needs PP > 1); None: plain 1F1B."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism for norms/dropout (needs TP > 1)."""
    data_parallel: int | None = None
    """Expected data-parallel size; None (usual): derived, see `TrainConfig.data_parallel_size`. When set, a launch
    with another world size is refused."""


@dataclass
class PrecisionSection:
    """Numerics of parameters and compute. The `fp8_*` defaults follow NVIDIA's published Llama-3 FP8 setting
    (Megatron-LM `examples/llama/train_llama3_8b_h100_fp8.sh`: `--fp8-format hybrid --fp8-amax-history-len 1024
    --fp8-amax-compute-algo max`, delayed scaling; NeMo `recipes/precision/mixed_precision.py` `bf16_with_fp8_mixed`
    adds margin 0); they only apply with `fp8` set."""

    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Compute / parameter dtype; master weights and optimizer state stay in fp32 for bf16 and fp16."""
    fp8: Literal["e4m3", "hybrid"] | None = None
    """FP8 GEMMs via Transformer Engine (`hybrid`: e4m3 forward, e5m2 backward, as in NVIDIA's Llama-3 FP8
    recipes); refused without TE. None: no FP8, and the other `fp8_*` fields must keep their defaults."""
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = "delayed"
    """How FP8 scaling factors are found (megatron-core 0.16.1 `fp8_recipe`): `delayed` from an amax history of
    earlier steps (NVIDIA's Llama-3 8B H100 FP8 example), `tensorwise` per-tensor current scaling (TE >= 2.2;
    NeMo's `bf16_with_fp8_current_scaling_mixed` keeps 1 first and 1 last layer in BF16 with it), `blockwise`
    (TE >= 2.3), `mxfp8` (Blackwell GPUs only). megatron's `custom` needs a quantizer factory: not offered."""
    fp8_amax_history_len: int = 1024
    """delayed recipe only: steps of amax history behind each scaling factor (megatron's own default is 1)."""
    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"
    """delayed recipe only: the scaling amax is the `max` of the history or the `most_recent` one (megatron's
    default)."""
    fp8_margin: int = 0
    """delayed recipe only: scaling factors are divided by 2**margin (headroom against overflow); >= 0."""
    fp8_bf16_layers_at_start: int = 0
    """Transformer layers at the start of the model that stay in BF16 (megatron's `first_last_layers_bf16` with
    `num_layers_at_start_in_bf16`); not with the delayed recipe (megatron refuses it); at most layers / PP."""
    fp8_bf16_layers_at_end: int = 0
    """Transformer layers at the end of the model that stay in BF16 (`num_layers_at_end_in_bf16`); as above."""
    loss_scale: float | None = None
    """fp16 only: a static loss scale; None = dynamic loss scaling."""
    initial_loss_scale: float = 2.0**16
    """fp16 dynamic loss scaling: the starting scale."""
    grad_reduce_in_fp32: bool = True
    """Accumulate and all-reduce gradients in fp32 (recommended for bf16)."""


@dataclass
class RecomputeSection:
    """Activation recomputation (trades compute for memory)."""

    granularity: Literal["none", "selective", "full"] = "none"
    """`selective` recomputes the attention core only; `full` recomputes whole transformer layers."""
    method: Literal["uniform", "block"] = "uniform"
    """full only: `uniform` checkpoints groups of `num_layers` layers; `block` checkpoints the first `num_layers`."""
    num_layers: int = 1
    """full only: layers per checkpointed group (uniform) or number of checkpointed layers per stage (block)."""


@dataclass
class OptimizerSection:
    """AdamW and the learning-rate schedule."""

    name: Literal["adamw"] = "adamw"
    """Optimizer (AdamW with decoupled weight decay)."""
    lr: float = 2e-5
    """Peak learning rate."""
    min_lr: float = 0.0
    """Floor of the cosine / linear decay."""
    weight_decay: float = 0.0
    """Decoupled weight decay (norms and biases excluded)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """After warmup: `constant` (the EndPrompt recipe), `cosine` or `linear` decay to min_lr."""
    warmup_steps: int = 0
    """Linear warmup from 0 to lr over this many steps."""
    decay_steps: int | None = None
    """Steps over which cosine/linear decays (after warmup); None = the rest of training."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state (and fp32 master weights) across data-parallel ranks (ZeRO-1)."""
    overlap_grad_reduce: bool = False
    """Overlap the gradient all-reduce / reduce-scatter with the backward pass."""
    overlap_param_gather: bool = False
    """Distributed optimizer: overlap the parameter all-gather with the next forward pass."""


@dataclass
class DataSection:
    """Pre-built EndPrompt datasets (see `megatron_endprompt.data`) and batching."""

    paths: list[str] = field(default_factory=list)
    """Dataset prefixes (`<prefix>.bin/.idx` + sidecar) written by the data builder."""
    weights: list[float] | None = None
    """Blending weights, one per path (normalised); None = proportional to dataset sizes."""
    split: str = "100,0,0"
    """train,valid,test percentages of every dataset (Megatron convention, e.g. `98,2,0`)."""
    seq_length: int = 8192
    """Physical sample length P in tokens; must equal the built datasets' P."""
    micro_batch_size: int = 1
    """Samples per micro-batch on one data-parallel rank."""
    global_batch_size: int = 64
    """Samples per optimizer step over all data-parallel ranks (micro_batch * DP * grad-accumulation)."""
    cue_loss_weight: float = 0.1
    """Loss weight of EndPrompt cue tokens (text tokens weigh 1.0); applied at load time, not stored in the data."""
    seed: int = 1234
    """Seed of the sample order (shuffling and blending)."""
    num_workers: int = 2
    """DataLoader worker processes per rank."""
    mock: bool = False
    """Use an in-memory synthetic, learnable corpus instead of `paths` (benchmarks, smoke tests)."""
    mock_num_samples: int = 4096
    """Mock data only: number of synthetic samples."""


@dataclass
class TrainingSection:
    """How long to train."""

    train_steps: int | None = None
    """Optimizer steps; exactly one of train_steps / train_samples must be set."""
    train_samples: int | None = None
    """Samples to consume; converted to ceil(train_samples / global_batch_size) steps."""
    seed: int = 1234
    """Seed of model initialisation and dropout."""
    exit_signal: str | None = "SIGTERM"
    """On this signal (SLURM preemption) every rank finishes the current step, a checkpoint is saved (with
    `checkpoint.save`) and the run exits 0; rerun the same command to resume. None: default signal handling."""

    def total_steps(self, global_batch_size: int) -> int:
        """Number of optimizer steps of the whole run."""
        if self.train_steps is not None:
            return self.train_steps
        return math.ceil((self.train_samples or 0) / global_batch_size)


@dataclass
class CheckpointSection:
    """Saving, resuming and initialising."""

    save: str | None = None
    """Checkpoint directory (`<save>/iter_XXXXXXX/`, `latest` marker, `metrics.jsonl`, `config.yaml`)."""
    save_interval: int | None = None
    """Save every N steps (and always at the end when `save` is set); None = only at the end."""
    keep_last: int | None = None
    """Keep only the newest N checkpoints; None keeps all."""
    load: str | None = None
    """Resume everything (weights, optimizer, schedule, data position) from this save dir's latest checkpoint (or
    this checkpoint dir) unless `save` already holds one, which always wins (a requeued job continues its own
    progress). None: resume from `save` if possible, else start fresh."""
    init_from: str | None = None
    """HF-converted Megatron dir (convert.hf_to_megatron): weights only; ignored when resuming."""
    save_at_end: bool = True
    """Save a checkpoint after the last step."""
    allow_fresh_start: bool = False
    """Start at step 0 although `save` holds iteration directories of which none is complete (or an unreadable
    `latest` with none complete); they are renamed to `*.aside`, not deleted. Without it such a run stops (exit 2)."""
    fallback_to_previous: bool = False
    """When the newest checkpoint fails verification (a file missing, truncated or changed against the manifest
    in `checkpoint_complete`), resume from the newest older one that verifies; newer ones in `save` are renamed
    to `*.aside`. Without it such a run stops (exit 2) naming the directory and the file."""
    allow_changed_data: bool = False
    """Resume although --data.global_batch_size, --data.seed, --data.paths (file names) or --data.weights differ
    from the checkpoint's run (the data order then differs from an uninterrupted run). Without it: exit 2."""


@dataclass
class LoggingSection:
    """What rank 0 reports."""

    log_interval: int = 10
    """Log every N steps (console, `<save>/metrics.jsonl`, TensorBoard)."""
    log_dir: str | None = None
    """Where metrics.jsonl and TensorBoard events go; None = the checkpoint `save` dir (nothing written if unset)."""
    tensorboard: bool = False
    """Also write TensorBoard events (skipped with a warning when tensorboard is not installed)."""
    eval_interval: int | None = None
    """Evaluate on the validation split every N steps; None = never."""
    eval_steps: int = 10
    """Global batches per evaluation."""
    peak_tflops: float | None = None
    """Peak dense TFLOP/s per device for MFU; None = from the device name (H100/H200: 989 bf16), n/a on CPU."""


@dataclass
class DebugSection:
    """Test hooks; leave at defaults for real runs."""

    log_sample_indices: bool = False
    """Record the global sample indices consumed by each step in metrics.jsonl (resume tests)."""
    kill_at_step: int | None = None
    """Fault injection: SIGKILL the process right after this step's optimizer update (before logging/saving)."""
    kill_during_save_at: int | None = None
    """Fault injection: SIGKILL the process while the checkpoint of this step is being written."""
    signal_at_step: int | None = None
    """Fault injection: deliver `training.exit_signal` to rank 0 after this step (the other ranks learn of it
    through the per-step agreement)."""
    deterministic: bool = False
    """Request deterministic algorithms (bitwise-reproducible resumes on one rank)."""


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "parallel": ParallelSection,
    "precision": PrecisionSection,
    "recompute": RecomputeSection,
    "optimizer": OptimizerSection,
    "data": DataSection,
    "training": TrainingSection,
    "checkpoint": CheckpointSection,
    "logging": LoggingSection,
    "debug": DebugSection,
}


@dataclass
class TrainConfig:
    """The whole training run: one section per concern."""

    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    precision: PrecisionSection = field(default_factory=PrecisionSection)
    recompute: RecomputeSection = field(default_factory=RecomputeSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    debug: DebugSection = field(default_factory=DebugSection)
    world_size: int = 1
    """Set by `validate` (from the launcher or --dry-run-world-size); not a recipe key."""

    # ---- derived quantities (valid after validate) ----
    @property
    def data_parallel_size(self) -> int:
        p = self.parallel
        return self.world_size // (p.tensor_parallel * p.pipeline_parallel * p.context_parallel)

    @property
    def num_micro_batches(self) -> int:
        """Gradient-accumulation steps per optimizer step on one data-parallel rank."""
        return self.data.global_batch_size // (self.data.micro_batch_size * self.data_parallel_size)

    @property
    def train_steps(self) -> int:
        return self.training.total_steps(self.data.global_batch_size)

    @property
    def tokens_per_step(self) -> int:
        return self.data.global_batch_size * self.data.seq_length

    def model_config(self) -> ModelConfig:
        """The resolved ModelConfig: preset / config file / checkpoint JSON, then `model.overrides`."""
        return resolve_model_config(self.model, self.checkpoint)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-serialisable) of every section; `load_config` accepts it back."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        model = out["model"]
        for key, value in model.pop("overrides").items():  # flatten back to the recipe form
            model[key] = value
        return out

    def validate(self, world_size: int | None = None, *, check_environment: bool = True) -> None:
        """Check every constraint before any compute; raise ValueError naming the flag to fix.

        world_size: ranks of the job (default: $WORLD_SIZE or 1). check_environment=False (dry runs) skips the
        checks that depend on this machine, e.g. Transformer Engine being installed.
        """
        from megatron_endprompt.training.validation import validate_config

        if world_size is None:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.world_size = world_size
        validate_config(self, check_environment)


def resolve_model_config(model: ModelSection, checkpoint: CheckpointSection) -> ModelConfig:
    """Base config (preset, config file, or the checkpoint's endprompt_model.json) with overrides applied."""
    if model.preset is not None:
        base = get_preset(model.preset)
    else:
        path = model.config_file or _checkpoint_model_json(checkpoint)
        if path is None:
            raise ValueError(
                "--model.preset: no model given; set model.preset, model.config_file, or checkpoint.init_from "
                f"(a converted dir containing {MODEL_CONFIG_FILE})"
            )
        if not Path(path).is_file():
            raise ValueError(f"--model.config_file: {path} does not exist")
        base = ModelConfig.from_dict(json.loads(Path(path).read_text()))
    overrides = dict(model.overrides)
    if isinstance(overrides.get("rope_scaling"), dict):
        rope = {**dataclasses.asdict(base.rope_scaling), **overrides["rope_scaling"]}
        overrides["rope_scaling"] = RopeScaling(**rope)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise ValueError(f"--model: unknown ModelConfig fields {unknown}")
    return dataclasses.replace(base, **overrides)


def _checkpoint_model_json(checkpoint: CheckpointSection) -> str | None:
    for directory in (checkpoint.init_from, checkpoint.load):
        if directory and (Path(directory) / MODEL_CONFIG_FILE).is_file():
            return str(Path(directory) / MODEL_CONFIG_FILE)
    if checkpoint.init_from:
        return str(Path(checkpoint.init_from) / MODEL_CONFIG_FILE)  # reported as missing by the caller
    return None


def load_config(yaml_path: str | os.PathLike | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (None = all defaults), apply command-line overrides, return the typed config.

    Values are type-checked against the dataclass fields (errors name the flag); cross-field constraints are
    checked by `TrainConfig.validate`, which callers run once they know the world size.
    """
    raw = read_recipe(yaml_path) if yaml_path is not None else {}
    apply_overrides(raw, overrides or [], SECTIONS)
    on_command_line: dict[str, Any] = {}
    apply_overrides(on_command_line, overrides or [], SECTIONS)
    _prefer_init_from_architecture(raw, on_command_line)
    return from_dict(raw)


def _prefer_init_from_architecture(raw: dict[str, Any], on_command_line: dict[str, Any]) -> None:
    """`--checkpoint.init_from DIR` on the command line, DIR holding an endprompt_model.json, and no
    `--model.preset` / `--model.config_file` there: drop the recipe's preset / config file so the base model is
    the checkpoint's. A recipe's preset (e.g. `tiny_cpu.yaml`'s `tiny`) rarely describes a checkpoint named at
    launch, and the mismatch used to surface only as a vocab or shape error at load time. A recipe that sets both
    init_from and a preset itself keeps its preset (its author states that they agree; validation checks it); the
    recipe's ModelConfig fields (`max_position_embeddings`, `rope_scaling`, ...) still apply on top."""
    init_from = (on_command_line.get("checkpoint") or {}).get("init_from")
    init_from = convert(init_from, str | None, "--checkpoint.init_from")
    model = raw.get("model")
    if not init_from or not isinstance(model, dict) or not (Path(init_from) / MODEL_CONFIG_FILE).is_file():
        return
    explicit = {key.replace("-", "_") for key in on_command_line.get("model") or {}}
    for key in list(model):
        name = key.replace("-", "_")
        if name in ("preset", "config_file") and name not in explicit and model[key] is not None:
            logger.info(
                "model: architecture from %s (the recipe's model.%s %r is not used; give --model.%s to force it)",
                Path(init_from) / MODEL_CONFIG_FILE,
                name,
                model[key],
                name,
            )
            del model[key]


def from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from a nested dict (recipe form), converting every value to its field type."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown recipe section(s) {unknown}; valid sections: {sorted(SECTIONS)}")
    sections = {name: build_section(name, cls, raw.get(name) or {}) for name, cls in SECTIONS.items()}
    return TrainConfig(**sections)
