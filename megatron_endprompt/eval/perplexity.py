"""Perplexity by context length on held-out text.

The text is one token stream (documents joined by EOD). For each length L we score up to N non-overlapping
windows of L tokens with positions 0..L-1 and report exp(mean NLL) over the whole window and over its last
quarter (the tail is where a longer context can help).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from megatron_endprompt.eval.backends import ModelBackend
from megatron_endprompt.eval.tasks.base import TokenizerLike

logger = logging.getLogger(__name__)


def _documents(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                record = json.loads(line)
                if "text" not in record:
                    raise ValueError(f"--ppl-data {path}:{n}: a jsonl record needs a 'text' field")
                docs.append(record["text"])
        return docs
    return [path.read_text(encoding="utf-8")]


def _indexed_stream(prefix: str) -> np.ndarray:
    from megatron_endprompt.data import load_samples

    ds = load_samples(prefix)
    parts = []
    for i in range(len(ds)):
        sample = ds[i]
        if not np.array_equal(sample["position_ids"], np.arange(len(sample["position_ids"]))):
            raise ValueError(
                f"--ppl-data {prefix}: sample {i} has position jumps; build the held-out set with the contiguous "
                "scheme"
            )
        parts.append(sample["tokens"])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def load_token_stream(source: str | Path, tokenizer: TokenizerLike | None) -> np.ndarray:
    """Tokens of a .txt file, a .jsonl file (field 'text'; a directory of them), or a built dataset prefix."""
    path = Path(source)
    if Path(f"{source}.meta.json").is_file():
        return _indexed_stream(str(source))
    files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    if not files or not all(p.is_file() for p in files):
        raise FileNotFoundError(
            f"--ppl-data: {source} is not a .txt/.jsonl file, a folder of them, or a dataset prefix (.meta.json)"
        )
    if tokenizer is None:
        raise ValueError("--ppl-data: text files need a tokenizer (--tokenizer-model)")
    ids: list[int] = []
    for f in files:
        for doc in _documents(f):
            ids += tokenizer.encode(doc) + [tokenizer.eod]
    return np.asarray(ids, dtype=np.int64)


def perplexity_by_length(
    backend: ModelBackend, stream: np.ndarray, lengths: Sequence[int], windows: int
) -> dict[str, dict]:
    """{str(L): {ppl, tail_ppl, nll, windows, tokens}} for every L; windows of L tokens from the stream's start."""
    out: dict[str, dict] = {}
    for length in lengths:
        n = min(windows, len(stream) // length)
        if n == 0:
            logger.warning(
                "perplexity: held-out text has %d tokens, fewer than length %d; skipped", len(stream), length
            )
            out[str(length)] = {"ppl": None, "tail_ppl": None, "nll": None, "windows": 0, "tokens": 0}
            continue
        nll, tail = [], []
        for w in range(n):
            window = stream[w * length : (w + 1) * length].tolist()
            token_nll = backend.token_nll(window).double()
            nll.append(token_nll)
            tail.append(token_nll[-max(1, (length - 1) // 4) :])
        mean = float(np.mean(np.concatenate([t.numpy() for t in nll])))
        tail_mean = float(np.mean(np.concatenate([t.numpy() for t in tail])))
        out[str(length)] = {
            "ppl": math.exp(mean), "tail_ppl": math.exp(tail_mean), "nll": mean, "windows": n,
            "tokens": n * (length - 1),
        }  # fmt: skip
    return out
