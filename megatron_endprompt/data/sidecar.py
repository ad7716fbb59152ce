"""The segment sidecar <prefix>.seg: per-sample position segments, compact and versioned.

Layout (little endian; see docs/data_format.md):
  header, 40 bytes: magic b"EPSEG\\x00\\x00\\x00" (8), u32 version (=1), u32 header size (=40), u64 sample count n,
                    u32 seq_length P, u32 segments per sample S, u64 target_length T
  records: n * S records of 13 bytes, packed: u32 length, i64 first_position, u8 role (0 text, 1 cue).
           Sample i owns records [i*S, (i+1)*S); unused trailing records have length 0.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from megatron_endprompt.positions import Segment

SIDECAR_MAGIC = b"EPSEG\x00\x00\x00"
SIDECAR_VERSION = 1
_HEADER = struct.Struct("<8sIIQIIQ")
RECORD_DTYPE = np.dtype([("length", "<u4"), ("first_position", "<i8"), ("role", "u1")], align=False)
_ROLE_CODES = {"text": 0, "cue": 1}
_CODE_ROLES = {v: k for k, v in _ROLE_CODES.items()}


class SidecarWriter:
    """Streams segment records to `path`; `close(num_samples)` writes the final header."""

    def __init__(
        self, path: str | os.PathLike, seq_length: int, target_length: int, segments_per_sample: int
    ):
        self.path = str(path)
        self.seq_length, self.target_length, self.per_sample = seq_length, target_length, segments_per_sample
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(self._header(0))
        self.count = 0

    def _header(self, n: int) -> bytes:
        return _HEADER.pack(
            SIDECAR_MAGIC,
            SIDECAR_VERSION,
            _HEADER.size,
            n,
            self.seq_length,
            self.per_sample,
            self.target_length,
        )

    def add(self, segments: list[Segment]) -> None:
        """Append one sample's segments."""
        if len(segments) > self.per_sample:
            raise ValueError(
                f"sample has {len(segments)} segments, sidecar holds {self.per_sample} per sample"
            )
        rec = np.zeros(self.per_sample, dtype=RECORD_DTYPE)
        for j, seg in enumerate(segments):
            rec[j] = (seg.length, seg.first_position, _ROLE_CODES[seg.role])
        self._f.write(rec.tobytes())
        self.count += 1

    def close(self) -> None:
        """Rewrite the header with the final sample count and close the file."""
        self._f.seek(0)
        self._f.write(self._header(self.count))
        self._f.close()


@dataclass(frozen=True)
class Sidecar:
    """A memory-mapped sidecar: `records` has shape [num_samples, segments_per_sample]."""

    path: str
    version: int
    num_samples: int
    seq_length: int
    target_length: int
    records: np.ndarray

    def segments(self, i: int) -> list[Segment]:
        """Segments of sample i (zero-length padding dropped)."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range [0, {self.num_samples})")
        return [
            Segment(int(r["length"]), int(r["first_position"]), _CODE_ROLES[int(r["role"])])
            for r in self.records[i]
            if r["length"] > 0
        ]


def read_sidecar(path: str | os.PathLike) -> Sidecar:
    """Open a sidecar; unknown magic or version raises ValueError naming the file and both versions."""
    path = str(path)
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size or head[:8] != SIDECAR_MAGIC:
        raise ValueError(f"{path}: not an EndPrompt segment sidecar (bad magic)")
    magic, version, header_size, n, p, per_sample, t = _HEADER.unpack(head)
    if version != SIDECAR_VERSION:
        raise ValueError(
            f"{path}: unsupported sidecar version {version}; this reader knows version {SIDECAR_VERSION}. "
            "Rebuild the data with this version of tools/build_endprompt_data.py or upgrade megatron-endprompt."
        )
    expected = header_size + n * per_sample * RECORD_DTYPE.itemsize
    if os.path.getsize(path) != expected:
        raise ValueError(f"{path}: size {os.path.getsize(path)} != expected {expected} bytes (truncated?)")
    mm = np.memmap(path, mode="r", dtype=np.uint8)
    records = np.frombuffer(mm, dtype=RECORD_DTYPE, count=n * per_sample, offset=header_size)
    return Sidecar(path, version, int(n), int(p), int(t), records.reshape(int(n), int(per_sample)))
