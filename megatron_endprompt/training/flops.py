"""FLOPs, MFU and per-GPU memory estimates for LLaMA-family training (pure arithmetic, no torch).

FLOPs per trained token (model FLOPs, forward + backward, recomputation not counted):

    F = 6 * N + 6 * L * (a * d_head) * s

N counts the parameters that take part in matrix multiplies: every transformer layer's projections
(q, k, v, o, gate, up, down) plus the output head; the input embedding is a lookup and the norms are negligible.
The second term is causal self-attention (QK^T and AV, 2 * 2 * d_attn * s multiply-adds per token for a full
square, halved by the causal mask, x3 for forward + backward), with s the PHYSICAL sequence length: EndPrompt
and PoSE train at physical length P while serving positions up to T, so they pay the attention term of P.
For Llama-3-8B this gives 51.5 GFLOP/token at s = 8K and 96.6 at s = 64K (the EndPrompt paper's numbers).
MFU = (tokens/s per GPU) * F / (peak dense FLOP/s of one GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megatron_endprompt.model.config import ModelConfig
    from megatron_endprompt.training.config import TrainConfig

GiB = 1024**3

# Dense (non-sparse) peak tensor-core throughput per device, in FLOP/s, from vendor datasheets.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp8": 1979e12, "fp32": 67e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp8": 1979e12, "fp32": 67e12},
    "H800": {"bf16": 989e12, "fp16": 989e12, "fp8": 1979e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "A800": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
}


def layer_matmul_params(cfg: ModelConfig) -> int:
    """Weights of one transformer layer's linear projections (GQA-aware, SwiGLU has three matrices)."""
    d, d_attn = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
    d_kv = cfg.num_query_groups * cfg.head_dim
    attention = d * d_attn + 2 * d * d_kv + d_attn * d
    mlp = 3 * d * cfg.ffn_hidden_size
    return attention + mlp


def matmul_params(cfg: ModelConfig) -> int:
    """N in 6N: all layers' projections plus the output head (the input embedding is a lookup)."""
    return cfg.num_layers * layer_matmul_params(cfg) + cfg.vocab_size * cfg.hidden_size


def total_params(cfg: ModelConfig) -> int:
    """Every parameter: layers (with their two RMSNorms), final norm, embedding, and an untied output head."""
    per_layer = layer_matmul_params(cfg) + 2 * cfg.hidden_size
    embeddings = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    return cfg.num_layers * per_layer + cfg.hidden_size + embeddings


def flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """Model FLOPs to train one token at physical sequence length `seq_length`: 6N + 6 * L * d_attn * s."""
    attention = 6 * cfg.num_layers * cfg.num_attention_heads * cfg.head_dim * seq_length
    return 6 * matmul_params(cfg) + attention


def peak_flops(device_name: str | None, dtype: str = "bf16") -> float | None:
    """Peak dense FLOP/s of one device from its name (e.g. 'NVIDIA H100 80GB HBM3'); None when unknown / CPU."""
    if not device_name:
        return None
    for key, table in PEAK_FLOPS.items():
        if key in device_name.upper():
            return table.get(dtype)
    return None


def mfu(tokens_per_s_per_device: float, flops_per_tok: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None when the peak is unknown."""
    if not peak:
        return None
    return tokens_per_s_per_device * flops_per_tok / peak


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU on the most loaded pipeline stage (first stage: embedding + in-flight micro-batches)."""

    params_per_gpu: int
    weights: float
    grads: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits

    def as_gib(self) -> dict[str, float]:
        fields = ("weights", "grads", "optimizer", "activations", "logits", "total")
        return {name: round(getattr(self, name) / GiB, 3) for name in fields}


def params_per_gpu(cfg: ModelConfig, tp: int, pp: int) -> int:
    """Parameters held by one rank of the largest pipeline stage (embedding and head sit on the end stages)."""
    layers = (cfg.num_layers // pp) * (layer_matmul_params(cfg) // tp + 2 * cfg.hidden_size)
    vocab = cfg.vocab_size * cfg.hidden_size // tp
    if pp == 1:
        return layers + vocab * (1 if cfg.tie_word_embeddings else 2) + cfg.hidden_size
    return layers + vocab + cfg.hidden_size  # first stage: embedding; last stage: head + final norm (similar)


def activation_bytes_per_token_layer(cfg: ModelConfig, tp: int, sequence_parallel: bool) -> float:
    """Activations one layer saves for backward per token, 2-byte elements, flash/SDPA attention (no s x s).

    Saved tensors: norm inputs (2 x d), QKV input (d), q/k/v (d_attn + 2 d_kv), attention output (d_attn),
    MLP input (d), gate/up outputs (2 f), SwiGLU output (f). Without sequence parallelism the four d-sized
    tensors before the column-parallel GEMMs are replicated on every TP rank.
    """
    d, d_attn = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
    d_kv, f = cfg.num_query_groups * cfg.head_dim, cfg.ffn_hidden_size
    replicated = 4 * d
    split = 2 * d_attn + 2 * d_kv + 3 * f
    if sequence_parallel:
        return 2 * (replicated + split) / tp
    return 2 * (replicated + split / tp)


def estimate_memory(train: TrainConfig) -> MemoryEstimate:
    """Per-GPU memory for `train` (validated): weights, grads, optimizer, activations and logits.

    Weights: 2 bytes (bf16/fp16) or 4 (fp32). Grads: 4 bytes with grad_reduce_in_fp32 (or fp32), else 2.
    Optimizer: Adam m and v in fp32 (8 bytes) plus fp32 master weights (4) for bf16/fp16, divided by the
    data-parallel x context-parallel size with the distributed optimizer. Activations: per layer and token as in
    `activation_bytes_per_token_layer`, for the layers of one stage and min(PP, micro-batches) micro-batches in
    flight on the first stage; full recompute keeps only each layer's input (2 d bytes) plus one recomputed group.
    Logits: bf16 logits and their fp32 softmax for one micro-batch on the last stage (vocab / TP).
    """
    cfg, p, d = train.model_config(), train.parallel, train.data
    tp, pp, cp = p.tensor_parallel, p.pipeline_parallel, p.context_parallel
    n = params_per_gpu(cfg, tp, pp)
    half = train.precision.dtype in ("bf16", "fp16")
    weights = n * (2 if half else 4)
    grads = n * (4 if (train.precision.grad_reduce_in_fp32 or not half) else 2)
    opt_bytes = 8 + (4 if half else 0)
    shards = max(train.data_parallel_size, 1) * cp  # megatron shards over the data x context parallel group
    optimizer = n * opt_bytes / (shards if train.optimizer.use_distributed_optimizer else 1)
    tokens = d.micro_batch_size * d.seq_length / cp
    layers = cfg.num_layers // pp
    per_layer = activation_bytes_per_token_layer(cfg, tp, p.sequence_parallel)
    r = train.recompute
    if r.granularity == "full":
        layer_input = 2 * cfg.hidden_size / (tp if p.sequence_parallel else 1)
        stored = layers * layer_input + min(r.num_layers, layers) * per_layer
    else:
        stored = layers * per_layer
    in_flight = min(pp, train.num_micro_batches)
    if p.virtual_pipeline_parallel:
        in_flight *= 1 + (pp - 1) / (pp * p.virtual_pipeline_parallel)
    activations = tokens * stored * in_flight
    logits = tokens * cfg.vocab_size / tp * (2 + 4)
    return MemoryEstimate(n, weights, grads, optimizer, activations, logits)
