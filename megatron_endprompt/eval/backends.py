"""Model backends behind one protocol: our Megatron checkpoints (via `load_model`) and HF directories.

Evaluation always feeds plain `arange` positions: position jumps are a training device only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from megatron_endprompt.checkpoint_layout import LATEST_FILE, MODEL_CONFIG_FILE
from megatron_endprompt.eval.greedy import greedy_recompute
from megatron_endprompt.eval.megatron_hooks import NLL_CHUNK

logger = logging.getLogger(__name__)


class ModelBackend(Protocol):
    """What evaluation needs from a model."""

    name: str
    max_positions: int
    """Largest position id + 1 the model is configured for (longer prompts are refused)."""
    vocab_size: int
    """True vocabulary size (the tokenizer must not produce larger ids)."""

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[b, s] long -> [b, s, vocab] float32 logits with positions 0..s-1."""
        ...

    def token_nll(self, input_ids: Sequence[int]) -> torch.Tensor:
        """Negative log-likelihood of tokens 1..s-1 given their prefixes: float32 [s - 1]."""
        ...

    def generate(
        self,
        input_ids: Sequence[int],
        max_new_tokens: int,
        stop_ids: Sequence[int] = (),
        draft: Sequence[int] = (),
    ) -> list[int]:
        """Greedy continuation (stop token excluded), at most `max_new_tokens` ids. `draft` is a guess at the
        continuation (evaluation passes the reference answer): it may make decoding cheaper, never different."""
        ...


def _positions(input_ids: torch.Tensor) -> torch.Tensor:
    b, s = input_ids.shape
    return torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)


def nll_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy of [s, V] logits against [s] targets, chunked, in float32."""
    out = [
        F.cross_entropy(logits[i : i + NLL_CHUNK].float(), targets[i : i + NLL_CHUNK], reduction="none")
        for i in range(0, targets.numel(), NLL_CHUNK)
    ]
    return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)


class HFBackend:
    """A transformers causal LM from a local directory (config.json + weights)."""

    def __init__(self, model_dir: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(self.device).eval()
        self.name = f"hf:{Path(model_dir).name}"
        self.max_positions = int(self.model.config.max_position_embeddings)
        self.vocab_size = int(self.model.config.vocab_size)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        return self.model(input_ids=input_ids, position_ids=_positions(input_ids)).logits.float()

    @torch.no_grad()
    def token_nll(self, input_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor([list(input_ids)], dtype=torch.long, device=self.device)
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        if decoder is None or head is None:  # not a decoder + head model: take full logits
            return nll_from_logits(self.logits(ids)[0, :-1], ids[0, 1:])
        hidden = decoder(input_ids=ids, position_ids=_positions(ids)).last_hidden_state[0, :-1]
        out = [
            F.cross_entropy(
                head(hidden[i : i + NLL_CHUNK]).float(), ids[0, i + 1 : i + 1 + NLL_CHUNK], reduction="none"
            )
            for i in range(0, hidden.shape[0], NLL_CHUNK)
        ]
        return torch.cat(out).cpu() if out else torch.zeros(0)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Sequence[int],
        max_new_tokens: int,
        stop_ids: Sequence[int] = (),
        draft: Sequence[int] = (),
    ) -> list[int]:
        from transformers import GenerationConfig

        del draft  # transformers decodes with a KV cache: a step costs one token, a guess saves nothing

        ids = torch.tensor([list(input_ids)], dtype=torch.long, device=self.device)
        stop = list(stop_ids) or None
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stop,
            pad_token_id=stop[0] if stop else 0,
        )  # fmt: skip
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        new = out[0, ids.shape[1] :].tolist()
        for i, tok in enumerate(new):
            if tok in stop_ids:
                return new[:i]
        return new


class MegatronBackend:
    """One of our Megatron checkpoints, loaded with `megatron_endprompt.load_model` (single process).

    kv_cache=True (default): hidden states come through a KV cache (`kv_cache.PrefixCachedForward`): the prompt is
    prefilled once, then every step feeds its new tokens only. kv_cache=False recomputes the whole sequence at
    every step (the reference the cache is tested against; same generations and answer NLLs).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        name: str = "megatron",
        device: str | torch.device | None = None,
        kv_cache: bool = True,
    ):
        self.model = model.eval()
        self.name = name
        self.device = torch.device(device or next(model.parameters()).device)
        self.max_positions = int(model.config.max_position_embeddings)
        self.vocab_size = int(model.config.vocab_size)
        self._last: tuple[torch.Tensor, torch.Tensor, dict] | None = None
        """(ids, final hidden states, output-layer kwargs) of the latest forward (see `_hidden`)."""
        self._cached = None
        if kv_cache and self._gpt() is not None:
            from megatron_endprompt.eval.kv_cache import PrefixCachedForward

            self._cached = PrefixCachedForward(self._gpt(), self.device, self.max_positions)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | None = None,
        dtype: torch.dtype = torch.float32,
        kv_cache: bool = True,
    ):
        from megatron_endprompt.convert.loading import load_model

        model = load_model(str(path), device=device, dtype=dtype)
        return cls(model, name=f"megatron:{Path(path).name}", kv_cache=kv_cache)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        return self.model(input_ids, _positions(input_ids)).float()

    def _gpt(self) -> torch.nn.Module | None:
        """The megatron GPTModel inside `load_model`'s wrapper (None for other modules: full-logit path)."""
        inner = getattr(self.model, "model", None)
        return inner if hasattr(inner, "output_layer") else None

    def _hidden(self, gpt: torch.nn.Module, ids: torch.Tensor, rows: int) -> tuple[torch.Tensor, dict]:
        """Final hidden states [rows, 1, h] of the last `rows` positions of ids [1, s] (no [s, vocab] logits)
        and the output layer's kwargs.

        Without the KV cache the latest sequence's are kept: evaluation scores the reference answer
        (`token_nll` of prompt + answer) and then generates with that answer as the draft, whose first step is
        the same sequence, so the second forward is free (the cache keeps them too). An evaluation backend:
        the weights are assumed not to change.
        """
        from megatron_endprompt.eval.megatron_hooks import final_hidden

        if self._cached is not None:
            return self._cached.hidden(ids[0].tolist(), rows)
        if self._last is None or not torch.equal(self._last[0], ids):
            self._last = (ids, *final_hidden(gpt, ids, _positions(ids)))
        return self._last[1][-rows:], self._last[2]

    @torch.no_grad()
    def token_nll(self, input_ids: Sequence[int]) -> torch.Tensor:
        from megatron_endprompt.eval.megatron_hooks import chunked_nll

        ids = torch.tensor([list(input_ids)], dtype=torch.long, device=self.device)
        gpt = self._gpt()
        if gpt is None:
            return nll_from_logits(self.logits(ids)[0, :-1], ids[0, 1:]).cpu()
        hidden, kwargs = self._hidden(gpt, ids, ids.shape[1])
        return chunked_nll(gpt, hidden[:-1], kwargs, ids[0, 1:], self.vocab_size).cpu()

    def _tail_logits(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        """float32 logits [n, vocab] of the last n positions of ids [1, s]."""
        from megatron_endprompt.eval.megatron_hooks import local_logits

        gpt = self._gpt()
        if gpt is None:
            return self.logits(ids)[0, -n:]
        hidden, kwargs = self._hidden(gpt, ids, n)
        return local_logits(gpt, hidden, kwargs, self.vocab_size)[:, 0, : self.vocab_size]

    @torch.no_grad()
    def generate(
        self,
        input_ids: Sequence[int],
        max_new_tokens: int,
        stop_ids: Sequence[int] = (),
        draft: Sequence[int] = (),
    ) -> list[int]:
        return greedy_recompute(self._tail_logits, input_ids, max_new_tokens, stop_ids, self.device, draft)


def checkpoint_kind(path: str | Path) -> str:
    """`megatron` (endprompt_model.json or a training save dir with `latest`), `hf` (config.json), else raise."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"--checkpoint: {p} is not a directory")
    if (p / MODEL_CONFIG_FILE).is_file() or (p / LATEST_FILE).is_file():
        return "megatron"
    if (p / "config.json").is_file():
        json.loads((p / "config.json").read_text())  # a clear JSON error beats a transformers traceback
        return "hf"
    raise ValueError(
        f"--checkpoint: {p} is neither a Megatron checkpoint (endprompt_model.json / latest) nor an HF "
        "directory (config.json)"
    )


def load_backend(
    path: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32, tp: int = 1, cp: int = 1
) -> ModelBackend:
    """Open a checkpoint directory with the right backend (multi-rank only for Megatron checkpoints)."""
    kind = checkpoint_kind(path)
    logger.info("loading %s checkpoint %s", kind, path)
    if kind == "hf":
        if tp * cp != 1:
            raise ValueError(
                "--tp/--cp apply to Megatron checkpoints; an HF directory is evaluated in one process"
            )
        return HFBackend(path, device=device, dtype=dtype)
    if tp * cp != 1:
        from megatron_endprompt.eval.parallel_backend import ParallelMegatronBackend

        return ParallelMegatronBackend.from_checkpoint(path, tp=tp, cp=cp, device=device, dtype=dtype)
    return MegatronBackend.from_checkpoint(path, device=device, dtype=dtype)
