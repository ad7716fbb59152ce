"""Output layer + cross entropy in sequence chunks: the [tokens, vocab] float32 logits never exist at once.

With a 128K vocabulary the logits of an 8K-token micro-batch are 8192 x 128256 x 4 B = 4 GiB in float32 (plus the
bf16 copy and the softmax gradient of the same size). `chunked_cross_entropy` computes, chunk by chunk of
`chunk_size` tokens, logits = x W^T, their log-sum-exp and the target logit, keeps only the per-token
log-sum-exp (4 bytes a token) for backward, and in backward recomputes each chunk's logits to form
softmax - onehot and the two matmuls for dx and dW. Peak extra memory: one chunk's logits.

Tensor parallelism: W is this rank's vocabulary shard [V / TP, h] (megatron's ColumnParallelLinear layout,
rows [rank * V/TP, (rank + 1) * V/TP)); max, sum of exponentials and the target logit are all-reduced over the TP
group exactly like megatron's vocab-parallel cross entropy. dx is this shard's partial sum: the caller's
input-side TP region (copy / sequence-parallel gather) all-reduces it in backward, as for the output layer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def _chunk_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """float32 logits of one chunk (matmul in the parameters' dtype, as the output layer does)."""
    return torch.matmul(x, weight.t()).float()


class _ChunkedVocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, labels, chunk_size: int, group, vocab_start: int):
        n, v_local = x.shape[0], weight.shape[0]
        loss = torch.empty(n, dtype=torch.float32, device=x.device)
        lse = torch.empty(n, dtype=torch.float32, device=x.device)
        for start in range(0, n, chunk_size):
            sl = slice(start, min(start + chunk_size, n))
            logits = _chunk_logits(x[sl], weight)
            local_max = logits.max(dim=-1).values
            gmax = _reduce(local_max.clone(), dist.ReduceOp.MAX, group)
            sum_exp = _reduce(torch.exp(logits - gmax[:, None]).sum(dim=-1), dist.ReduceOp.SUM, group)
            target = labels[sl] - vocab_start
            in_shard = (target >= 0) & (target < v_local)
            picked = logits.gather(1, target.clamp(0, v_local - 1)[:, None]).squeeze(1) * in_shard
            picked = _reduce(picked, dist.ReduceOp.SUM, group)
            lse[sl] = gmax + torch.log(sum_exp)
            loss[sl] = lse[sl] - picked
        ctx.save_for_backward(x, weight, labels, lse)
        ctx.chunk_size, ctx.vocab_start = chunk_size, vocab_start
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x, weight, labels, lse = ctx.saved_tensors
        n, v_local = x.shape[0], weight.shape[0]
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx = torch.empty_like(x) if need_x else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for start in range(0, n, ctx.chunk_size):
            sl = slice(start, min(start + ctx.chunk_size, n))
            logits = _chunk_logits(x[sl], weight)
            grad = torch.exp(logits - lse[sl, None])  # softmax over the full (all-shard) vocabulary
            target = labels[sl] - ctx.vocab_start
            in_shard = (target >= 0) & (target < v_local)
            rows = torch.arange(grad.shape[0], device=grad.device)
            grad[rows, target.clamp(0, v_local - 1)] -= in_shard.float()
            grad = (grad * grad_loss[sl, None].float()).to(weight.dtype)
            if need_x:
                dx[sl] = torch.matmul(grad, weight)
            if need_w:
                dw += torch.matmul(grad.t(), x[sl]).float()
        return dx, dw.to(weight.dtype) if need_w else None, None, None, None, None


def chunked_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int,
    group: dist.ProcessGroup | None = None,
    vocab_start: int = 0,
) -> torch.Tensor:
    """Per-token CE [n] (float32) of logits x @ weight.T without materialising them; see the module docstring.

    x [n, h], weight [V_local, h] (this TP rank's vocabulary rows from `vocab_start`), labels [n] global ids.
    """
    if chunk_size <= 0:
        raise ValueError(
            f"--model.ce_chunk_size must be positive for chunked cross entropy, got {chunk_size}"
        )
    if x.dim() != 2 or labels.shape != x.shape[:1]:
        raise ValueError(f"expected x [n, h] and labels [n], got {tuple(x.shape)} and {tuple(labels.shape)}")
    return _ChunkedVocabParallelCE.apply(x, weight, labels.long(), int(chunk_size), group, int(vocab_start))
