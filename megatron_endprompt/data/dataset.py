"""Reader used by training: `load_samples(prefix)` -> random-access samples with tokens, labels, weights, positions.

Label convention (docs/data_format.md): a sample stores exactly P tokens. labels[j] = tokens[j+1] for j < P-1;
the last position has no target inside the sample, so labels[P-1] = EOD and loss_weights[P-1] = 0. This is the
paper's objective (eq. 11 sums predictions l = 0 .. a+b-2) and the released code's (HF shifts labels inside the
model). Weights: 1 where the label is a text token, `cue_loss_weight` where the label is a cue token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from megatron_endprompt import positions
from megatron_endprompt.data.indexed import read_index
from megatron_endprompt.data.sidecar import read_sidecar

META_FORMAT = "megatron-endprompt-samples"
META_VERSION = 1


def read_meta(prefix: str | os.PathLike) -> dict:
    """The <prefix>.meta.json written by the builder (checked for format and version)."""
    path = Path(f"{prefix}.meta.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; build the data with tools/build_endprompt_data.py")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != META_FORMAT or meta.get("format_version") != META_VERSION:
        raise ValueError(
            f"{path}: format {meta.get('format')!r} version {meta.get('format_version')!r} is not "
            f"{META_FORMAT!r} version {META_VERSION}; rebuild the data"
        )
    return meta


def require_sidecar(prefix: str | os.PathLike) -> str:
    """The path of <prefix>.seg; FileNotFoundError naming it when it is missing.

    The sidecar is the only record of each sample's positions. Without it the .bin/.idx pair still reads as an
    ordinary token stream (Megatron-LM's own GPTDataset reads it so), and cue tokens would train at contiguous
    positions: a wrong run, not a failed one. So a prefix without its sidecar is refused, never read as plain.
    """
    path = f"{prefix}.seg"
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: position sidecar missing (every prefix in --data.paths needs <prefix>.seg next to its "
            ".bin/.idx; without it cue tokens would train at ordinary positions). Copy the .seg with the data or "
            "rebuild the prefix with tools/build_endprompt_data.py"
        )
    return path


def _read_origins(prefix: str | os.PathLike, n: int) -> np.ndarray | None:
    """<prefix>.origin.npy: (document ordinal, token offset) where each sample starts; None for prefixes built
    before it existed (their training order then stays the old one, see data/blended.py)."""
    path = Path(f"{prefix}.origin.npy")
    if not path.is_file():
        return None
    origins = np.load(path, mmap_mode="r")
    if origins.shape != (n, 2):
        raise ValueError(f"{path}: shape {origins.shape} != ({n}, 2); rebuild the data")
    return origins


class EndPromptSamples(Sequence):
    """Samples of one built prefix; `ds[i]` -> dict of numpy arrays of length P."""

    def __init__(self, prefix: str | os.PathLike, cue_loss_weight: float = 0.1) -> None:
        if cue_loss_weight < 0:
            raise ValueError(f"cue_loss_weight must be >= 0, got {cue_loss_weight}")
        self.prefix = str(prefix)
        self.cue_loss_weight = float(cue_loss_weight)
        sidecar_path = require_sidecar(prefix)  # first: a .bin/.idx pair alone must never read as data
        self.meta = read_meta(prefix)
        self.sidecar = read_sidecar(sidecar_path)
        index = read_index(f"{prefix}.idx")
        self.seq_length = self.sidecar.seq_length
        self.target_length = self.sidecar.target_length
        self.eod = int(self.meta["tokenizer"]["eod"])
        n = self.sidecar.num_samples
        if index.sequence_count != n or self.meta["counts"]["samples"] != n:
            raise ValueError(
                f"{prefix}: inconsistent build (.idx has {index.sequence_count} samples, .seg {n}, meta.json "
                f"{self.meta['counts']['samples']}); rebuild the data"
            )
        if n and np.any(index.lengths != self.seq_length):
            raise ValueError(f"{prefix}.idx: every sequence must have P={self.seq_length} tokens")
        expected = n * self.seq_length * index.dtype.itemsize
        if os.path.getsize(f"{prefix}.bin") != expected:
            raise ValueError(f"{prefix}.bin: size {os.path.getsize(f'{prefix}.bin')} != {expected} bytes")
        self._tokens = (
            np.memmap(f"{prefix}.bin", mode="r", dtype=index.dtype, shape=(n, self.seq_length))
            if n
            else np.zeros((0, self.seq_length), dtype=index.dtype)
        )
        self.origins = _read_origins(prefix, n)

    def __len__(self) -> int:
        return self.sidecar.num_samples

    def __getstate__(self) -> dict:
        # Pickle (e.g. DataLoader workers under spawn) by path: never copy the memory-mapped arrays.
        return {"prefix": self.prefix, "cue_loss_weight": self.cue_loss_weight}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefix"], state["cue_loss_weight"])

    def segments(self, i: int) -> list[positions.Segment]:
        """The stored segments of sample i."""
        return self.sidecar.segments(i)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("EndPromptSamples supports integer indices only")
        i = int(i)
        if i < 0:
            i += len(self)
        segments = self.sidecar.segments(i)  # raises IndexError when out of range
        tokens = np.asarray(self._tokens[i], dtype=np.int64)
        labels = np.empty_like(tokens)
        labels[:-1] = tokens[1:]
        labels[-1] = self.eod
        return {
            "tokens": tokens,
            "labels": labels,
            "loss_weights": positions.loss_weights(segments, self.cue_loss_weight),
            "position_ids": positions.position_ids(segments),
        }


def load_samples(prefix: str | os.PathLike, cue_loss_weight: float = 0.1) -> EndPromptSamples:
    """Open a built prefix (<prefix>.bin/.idx/.seg/.meta.json) for reading."""
    return EndPromptSamples(prefix, cue_loss_weight)
