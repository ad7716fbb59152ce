"""Core attention on `torch.nn.functional.scaled_dot_product_attention`, with context parallelism.

Drop-in for megatron-core's `core_attention` submodule (same constructor and forward signature as
`DotProductAttention`), but it never materialises the s x s score matrix: SDPA dispatches to flash / cuDNN /
memory-efficient kernels on GPU. Upstream local attention also refuses context parallelism; this module
supports it by all-gathering K/V over the CP group (backward reduce-scatters their gradients) and masking
causally by GLOBAL token index under megatron's 2*cp chunk layout (rank r holds chunks r and 2cp-1-r).

The SDPA backend can be forced (`--model.attention_backend`, the config field
`EndPromptTransformerConfig.ep_sdpa_backend`): `auto` lets PyTorch choose, `cudnn` / `flash` / `efficient` /
`math` pin one kernel through `torch.nn.attention.sdpa_kernel`. On CPU only `auto`, `math` and `flash` (PyTorch has a CPU flash kernel) exist;
`cudnn` and `efficient` fall back to `auto` there with a logged note.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from torch.nn.attention.bias import causal_lower_right

from megatron_endprompt.model.transformer_config import EndPromptTransformerConfig

logger = logging.getLogger(__name__)

SDPA_BACKENDS: tuple[str, ...] = ("auto", "cudnn", "flash", "efficient", "math")
"""Values of `--model.attention_backend`."""
_CPU_BACKENDS = ("auto", "math", "flash")
_CPU_FALLBACK_LOGGED: set[str] = set()
_NO_GQA_KERNEL: set[str] = set()
"""Pinned backends found to lack a GQA kernel in this process (K/V are expanded for them)."""


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Repeat K/V heads [b, g, s, d] to q's head count; returns (k, v, gqa=False)."""
    rep = q.shape[1] // k.shape[1]
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), False


def check_sdpa_backend(name: str, flag: str = "--model.attention_backend") -> str:
    """Return `name` when it is a known SDPA backend; ValueError naming `flag` otherwise."""
    if name not in SDPA_BACKENDS:
        raise ValueError(f"{flag}: unknown SDPA backend {name!r}; choose one of {SDPA_BACKENDS}")
    return name


def sdpa_backend_context(name: str, device: torch.device):
    """Context manager pinning SDPA to backend `name` for tensors on `device` (`auto`: no constraint)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    check_sdpa_backend(name)
    if device.type != "cuda" and name not in _CPU_BACKENDS:
        if name not in _CPU_FALLBACK_LOGGED:
            _CPU_FALLBACK_LOGGED.add(name)
            logger.warning(
                "--model.attention_backend %s has no kernel on %s; using auto (PyTorch's choice) there",
                name,
                device.type,
            )
        name = "auto"
    if name == "auto":
        return contextlib.nullcontext()
    table = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel([table[name]])


class _AllGatherSeq(torch.autograd.Function):
    """All-gather along dim 0 over a process group; backward sums gradients and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group = ctx.group
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        grad = grad.contiguous()
        if dist.get_backend(group) == "nccl":
            out = torch.empty((grad.shape[0] // world, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, group=group)
            return out, None
        # gloo has no reduce-scatter: all-reduce, then keep this rank's slice.
        dist.all_reduce(grad, group=group)
        return grad.chunk(world, dim=0)[rank].contiguous(), None


def all_gather_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Autograd-aware all-gather of `x` [s_local, ...] into [world * s_local, ...] (rank order)."""
    return _AllGatherSeq.apply(x, group)


def cp_chunk_order(cp_size: int) -> list[int]:
    """Global chunk ids in the order they appear after all-gathering each rank's (r, 2cp-1-r) pair."""
    order = []
    for r in range(cp_size):
        order += [r, 2 * cp_size - 1 - r]
    return order


def _to_global_order(gathered: torch.Tensor, cp_size: int) -> torch.Tensor:
    """Reorder an all-gathered [2cp * L, ...] tensor from rank order to global chunk order."""
    chunks = gathered.chunk(2 * cp_size, dim=0)
    position_of = {c: i for i, c in enumerate(cp_chunk_order(cp_size))}
    return torch.cat([chunks[position_of[c]] for c in range(2 * cp_size)], dim=0)


class SDPAttention(MegatronModule):
    """Causal (or unmasked) attention over [s, b, h, d] tensors via SDPA; returns [s, b, h * d]."""

    def __init__(
        self,
        config: EndPromptTransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__(config=config)
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = (
            softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        )
        if pg_collection is None:
            from megatron.core import parallel_state

            self.cp_group = (
                parallel_state.get_context_parallel_group() if config.context_parallel_size > 1 else None
            )
        else:
            self.cp_group = getattr(pg_collection, "cp", None)
        if self.cp_group is not None and dist.get_world_size(self.cp_group) == 1:
            self.cp_group = None

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        """query [sq, b, np, d], key/value [sk, b, ng, d] -> [sq, b, np * d]."""
        if packed_seq_params is not None:
            raise NotImplementedError("SDPAttention does not support packed sequences (thd)")
        if attention_bias is not None:
            raise NotImplementedError("SDPAttention does not support attention_bias")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = mask_type == AttnMaskType.causal
        dropout = self.attention_dropout if self.training else 0.0
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        backend = self.backend
        with sdpa_backend_context(backend, q.device):
            if self.cp_group is not None:
                if attention_mask is not None or not causal:
                    raise NotImplementedError(
                        "context parallel attention supports only the implicit causal mask"
                    )
                out = self._cp_causal(q, key, value, dropout)
            else:
                out = self._local(q, k, v, attention_mask, causal, dropout, backend)
        sq, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)

    @property
    def backend(self) -> str:
        """The SDPA backend asked for in the config (read per call: the engine may set it late)."""
        return check_sdpa_backend(self.config.ep_sdpa_backend)

    def _local(
        self, q, k, v, attention_mask, causal: bool, dropout: float, backend: str = "auto"
    ) -> torch.Tensor:
        gqa = q.shape[1] != k.shape[1]
        expand = backend in _NO_GQA_KERNEL or (
            q.is_cuda and (q.dtype == torch.float32 or attention_mask is not None or backend == "efficient")
        )
        if gqa and expand:
            # Flash / cuDNN (the GQA-capable kernels) take neither fp32 nor explicit masks, and the
            # memory-efficient kernel has no GQA: expand K/V rather than fall back to the s x s math kernel.
            k, v, gqa = _expand_kv(q, k, v)
        try:
            return self._sdpa(q, k, v, attention_mask, causal, dropout, gqa)
        except RuntimeError as err:
            no_kernel = "No available kernel" in str(err) or "No viable backend" in str(err)
            if not gqa or backend == "auto" or not no_kernel:
                raise
            # A pinned backend without a GQA kernel in this PyTorch build: expand K/V from now on.
            _NO_GQA_KERNEL.add(backend)
            logger.warning("SDPA backend %s has no GQA kernel here; expanding K/V heads for it", backend)
            k, v, _ = _expand_kv(q, k, v)
            return self._sdpa(q, k, v, attention_mask, causal, dropout, False)

    def _sdpa(self, q, k, v, attention_mask, causal: bool, dropout: float, gqa: bool) -> torch.Tensor:
        if attention_mask is not None:
            # megatron masks are True where attention is NOT allowed; SDPA wants True where it is.
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=~attention_mask,
                dropout_p=dropout,
                scale=self.softmax_scale,
                enable_gqa=gqa,
            )
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=causal, scale=self.softmax_scale, enable_gqa=gqa
        )

    def _cp_causal(
        self, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float
    ) -> torch.Tensor:
        """Local queries hold chunks (r, 2cp-1-r); gather all keys, attend chunk c to global keys [0, (c+1)L)."""
        group = self.cp_group
        cp_size, rank = dist.get_world_size(group), dist.get_rank(group)
        k_all = _to_global_order(all_gather_sequence(key, group), cp_size)  # [S, b, ng, d]
        v_all = _to_global_order(all_gather_sequence(value, group), cp_size)
        k_all, v_all = (t.permute(1, 2, 0, 3) for t in (k_all, v_all))  # [b, ng, S, d]
        if q.shape[1] != k_all.shape[1]:
            # The lower-right causal kernels take no GQA flag: expand K/V heads explicitly.
            rep = q.shape[1] // k_all.shape[1]
            k_all, v_all = k_all.repeat_interleave(rep, dim=1), v_all.repeat_interleave(rep, dim=1)
        chunk_len = q.shape[2] // 2
        outs = []
        for half, chunk in enumerate((rank, 2 * cp_size - 1 - rank)):
            q_c = q[:, :, half * chunk_len : (half + 1) * chunk_len]
            kv_len = (chunk + 1) * chunk_len
            bias = causal_lower_right(chunk_len, kv_len)
            outs.append(
                F.scaled_dot_product_attention(
                    q_c,
                    k_all[:, :, :kv_len],
                    v_all[:, :, :kv_len],
                    attn_mask=bias,
                    dropout_p=dropout,
                    scale=self.softmax_scale,
                )
            )
        return torch.cat(outs, dim=2)
