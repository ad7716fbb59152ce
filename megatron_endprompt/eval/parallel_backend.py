"""Megatron backend sharded over tensor (TP) and context (CP) parallel ranks, launched with torchrun.

Every rank runs the same evaluation loop on the same prompt (tasks are deterministic); the model is sharded:
- TP: each rank holds 1/TP of the heads, MLP and vocabulary; logits rows are gathered only where needed.
- CP: the prompt is padded to a multiple of 2*CP and split into megatron's load-balanced chunks; attention
  all-gathers K/V (model/attention.py), so a 64K prompt costs each rank 1/CP of the activations.
Logits are computed from the captured final hidden states (megatron_hooks.py): chunked vocab-parallel cross
entropy for perplexity, a few rows for generation; full [s, vocab] logits never exist. At CP = 1 generation runs
through a KV cache (eval/kv_cache.py: prefill once, then the new tokens only; each TP rank caches its own heads);
at CP > 1 it recomputes the prompt at every step. Either way a draft (the reference answer) lets one step accept
several tokens.
Pipeline parallelism is not supported here: checkpoints are layout-free, so load them with PP=1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_endprompt.eval.greedy import greedy_recompute
from megatron_endprompt.eval.megatron_hooks import chunked_nll, final_hidden, local_logits
from megatron_endprompt.parallel import slice_batch_for_cp

logger = logging.getLogger(__name__)


class ParallelMegatronBackend:
    """Our checkpoint at TP x CP ranks (world size must equal TP * CP; PP = 1)."""

    def __init__(
        self,
        model: torch.nn.Module,
        vocab_size: int,
        max_positions: int,
        name: str,
        device: torch.device,
        kv_cache: bool = True,
    ):
        from megatron.core import parallel_state as ps

        from megatron_endprompt.eval.kv_cache import PrefixCachedForward

        self.model = model.eval()
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.name = name
        self.device = device
        self.tp_group, self.cp_group = ps.get_tensor_model_parallel_group(), ps.get_context_parallel_group()
        self.cp, self.cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
        self._last: tuple | None = None
        """(token ids, hidden, kwargs, padded length) of the latest forward (see `_local_hidden`)."""
        self._cached = (
            PrefixCachedForward(model, device, max_positions) if kv_cache and self.cp == 1 else None
        )
        """The KV-cached path (CP = 1 only: the CP attention gathers whole-sequence K/V)."""

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        tp: int,
        cp: int,
        device: str | None = None,
        dtype: torch.dtype = torch.float32,
        kv_cache: bool = True,
    ) -> ParallelMegatronBackend:
        from megatron_endprompt.convert import megatron_io
        from megatron_endprompt.model.gpt import build_model, padded_vocab_size
        from megatron_endprompt.model.split import SplitNames, split_problems
        from megatron_endprompt.parallel import initialize

        ckpt = megatron_io.resolve_checkpoint_dir(path)
        cfg = megatron_io.read_model_json(ckpt)
        problems = split_problems(cfg, tp, names=SplitNames(tp="--tp {}", pp="--pp {}"))
        if problems:  # before initialize: megatron would fail on its own assertion
            raise ValueError("; ".join(problems))
        initialize(tp=tp, pp=1, cp=cp)
        if dist.get_world_size() != tp * cp:
            raise ValueError(
                f"--tp {tp} --cp {cp}: launch exactly tp*cp = {tp * cp} ranks (got {dist.get_world_size()})"
            )
        metadata = megatron_io.checkpoint_metadata(ckpt)
        prefix = megatron_io.checkpoint_prefix(metadata)
        saved_vocab = metadata[prefix + "embedding.word_embeddings.weight"].global_shape[0]
        if saved_vocab != padded_vocab_size(cfg.vocab_size, tp):
            raise ValueError(
                f"--tp {tp}: the checkpoint's vocabulary is padded to {saved_vocab} rows, TP={tp} needs "
                f"{padded_vocab_size(cfg.vocab_size, tp)}; convert it with `--tp {tp}`"
            )
        model = build_model(cfg, params_dtype=dtype, use_te=False)
        loaded = megatron_io.load_dist_checkpoint(model.sharded_state_dict(prefix=prefix), ckpt)
        model.load_state_dict({k[len(prefix) :]: v for k, v in loaded.items()}, strict=True)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.to(device=dev, dtype=dtype).requires_grad_(False)
        name = f"megatron-tp{tp}-cp{cp}:{ckpt.name}"
        return cls(model, cfg.vocab_size, cfg.max_position_embeddings, name, dev, kv_cache=kv_cache)

    def _local_inputs(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This CP rank's chunks of the (padded) tokens and positions, and the padded length."""
        s = len(ids)
        s_pad = -(-s // (2 * self.cp)) * 2 * self.cp
        tokens = torch.tensor([list(ids) + [ids[-1]] * (s_pad - s)], dtype=torch.long, device=self.device)
        # padding sits after every real token (causal: it changes nothing); clamp keeps positions < max
        positions = torch.arange(s_pad, device=self.device).clamp(max=s - 1).unsqueeze(0)
        local = slice_batch_for_cp({"tokens": tokens, "position_ids": positions})
        return local["tokens"], local["position_ids"], s_pad

    def _owner(self, index: int, s_pad: int) -> tuple[int, int]:
        """(cp rank, local row) holding global sequence position `index`."""
        from megatron_endprompt.parallel.context_parallel import cp_chunk_ids

        chunk_len = s_pad // (2 * self.cp)
        chunk = index // chunk_len
        for r in range(self.cp):
            ids = cp_chunk_ids(self.cp, r)
            if chunk in ids:
                return r, ids.index(chunk) * chunk_len + index % chunk_len
        raise AssertionError(index)

    def _gather_vocab(self, rows: torch.Tensor) -> torch.Tensor:
        """[..., V/TP] shards -> [..., vocab_size] on every rank."""
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size(self.tp_group))]
        dist.all_gather(parts, rows.contiguous(), group=self.tp_group)
        return torch.cat(parts, dim=-1)[..., : self.vocab_size].float()

    @torch.no_grad()
    def _local_hidden(self, seq: Sequence[int]) -> tuple[torch.Tensor, dict, int]:
        """This rank's final hidden states [s_local, 1, h] (no full logits), output-layer kwargs, padded length.
        The latest sequence's are kept, as in `MegatronBackend._hidden` (every rank sees the same calls)."""
        key = tuple(seq)
        if self._last is None or self._last[0] != key:
            tokens, positions, s_pad = self._local_inputs(seq)
            self._last = (key, *final_hidden(self.model, tokens, positions), s_pad)
        return self._last[1], self._last[2], self._last[3]

    def _gather_rows(self, local: torch.Tensor, s_pad: int, n: int) -> torch.Tensor:
        """Rows 0..n-1 in global order from every CP rank's [s_local, ...] tensor."""
        parts = [torch.empty_like(local) for _ in range(self.cp)]
        dist.all_gather(parts, local.contiguous(), group=self.cp_group)
        return torch.stack([parts[r][j] for r, j in (self._owner(i, s_pad) for i in range(n))])

    @torch.no_grad()
    def _tail_logits(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        """float32 logits [n, vocab] of the last n positions of ids [1, s], on every rank."""
        seq = ids[0].tolist()
        if self._cached is not None:
            hidden, kwargs = self._cached.hidden(seq, n)
            return self._gather_vocab(local_logits(self.model, hidden, kwargs, self.vocab_size)[:, 0])
        hidden, kwargs, s_pad = self._local_hidden(seq)
        rows = []
        for index in range(len(seq) - n, len(seq)):
            owner, row = self._owner(index, s_pad)
            candidate = local_logits(self.model, hidden[row : row + 1], kwargs, self.vocab_size)[0, 0]
            rows.append(candidate if owner == self.cp_rank else torch.zeros_like(candidate))
        mine = torch.stack(rows)
        dist.all_reduce(mine, group=self.cp_group)  # each row has one owner; the others add zeros
        return self._gather_vocab(mine)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full [b, s, vocab] logits on every rank (for checks on short inputs; memory grows as s x vocab)."""
        out = []
        for seq in input_ids.tolist():
            hidden, kwargs, s_pad = self._local_hidden(seq)
            local = self._gather_vocab(local_logits(self.model, hidden, kwargs, self.vocab_size)[:, 0])
            out.append(self._gather_rows(local, s_pad, len(seq)))
        return torch.stack(out)

    @torch.no_grad()
    def token_nll(self, input_ids: Sequence[int]) -> torch.Tensor:
        ids = list(input_ids)
        if self._cached is not None:
            hidden, kwargs = self._cached.hidden(ids, len(ids))
            targets = torch.tensor(ids[1:], dtype=torch.long, device=self.device)
            return chunked_nll(self.model, hidden[:-1], kwargs, targets, self.vocab_size).cpu()
        hidden, kwargs, s_pad = self._local_hidden(ids)
        targets = torch.tensor([ids[1:] + [ids[-1]] * (s_pad - len(ids) + 1)], device=self.device)
        local_targets = slice_batch_for_cp({"t": targets})["t"][0]
        nll = chunked_nll(self.model, hidden, kwargs, local_targets, self.vocab_size)  # [s_local], TP-reduced
        return self._gather_rows(nll, s_pad, len(ids) - 1).cpu()

    @torch.no_grad()
    def generate(
        self,
        input_ids: Sequence[int],
        max_new_tokens: int,
        stop_ids: Sequence[int] = (),
        draft: Sequence[int] = (),
    ) -> list[int]:
        new = greedy_recompute(self._tail_logits, input_ids, max_new_tokens, stop_ids, self.device, draft)
        # every rank computed the same argmax from the same gathered row; rank 0's answer is authoritative
        out = torch.tensor([len(new), *new, *([0] * (max_new_tokens - len(new)))], device=self.device)
        dist.broadcast(out, src=0)
        return out[1 : 1 + int(out[0])].tolist()
