"""Run megatron's GPTModel without materialising [s, vocab] logits: capture the final hidden states at the
output layer, then compute logits only for the rows that are needed, or cross entropy chunk by chunk.

At 64K tokens and a 128K vocabulary, full float32 logits would take 32 GB; a 2048-row chunk takes 1 GB.
Padded vocabulary columns (megatron pads to a multiple of 128 x TP) are masked to -inf, so probabilities are
over the true vocabulary exactly as in HF.
"""

from __future__ import annotations

import torch

NLL_CHUNK = 2048
"""Sequence rows per logits chunk: bounds memory at [chunk, vocab] floats (every backend's chunked NLL uses it)."""


def final_hidden(
    gpt: torch.nn.Module, tokens: torch.Tensor, positions: torch.Tensor, **forward_kwargs
) -> tuple[torch.Tensor, dict]:
    """Forward `gpt` (an EndPromptGPTModel) and return the output layer's input [s, b, h] and its kwargs.

    A forward pre-hook hands the output layer a single row instead of all of them (its tiny result is
    discarded), so the forward itself never builds full logits. `forward_kwargs` go to the model (a KV cache's
    `inference_context`, `attention_mask`, and the `runtime_gather_output=True` megatron then insists on); the
    kwargs returned ask for this rank's vocabulary shard, as `local_logits` expects.
    """
    store: dict = {}

    def hook(_module, args, kwargs):
        store["hidden"], store["kwargs"] = args[0], {**kwargs, "runtime_gather_output": None}
        return (args[0][:1], *args[1:]), kwargs

    handle = gpt.output_layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        gpt(tokens, positions, **forward_kwargs)
    finally:
        handle.remove()
    return store["hidden"], store["kwargs"]


def local_logits(gpt: torch.nn.Module, hidden: torch.Tensor, kwargs: dict, vocab_size: int) -> torch.Tensor:
    """float32 logits [r, b, V_pad / TP] of this TP rank for hidden rows [r, b, h]; padded columns are -inf."""
    from megatron.core import parallel_state as ps

    logits = gpt.output_layer(hidden, **kwargs)[0].float()
    width = logits.shape[-1]
    start = ps.get_tensor_model_parallel_rank() * width
    if start + width > vocab_size:  # this shard holds padding columns
        logits[..., max(0, vocab_size - start) :] = float("-inf")
    return logits


def chunked_nll(
    gpt: torch.nn.Module, hidden: torch.Tensor, kwargs: dict, targets: torch.Tensor, vocab_size: int
):
    """Per-row cross entropy [s] (float32) of hidden rows [s, 1, h] against targets [s], TP-aware."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    out = []
    for i in range(0, targets.numel(), NLL_CHUNK):
        logits = local_logits(gpt, hidden[i : i + NLL_CHUNK], kwargs, vocab_size)
        out.append(vocab_parallel_cross_entropy(logits, targets[i : i + NLL_CHUNK].unsqueeze(1))[:, 0])
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)
