"""Writer and header reader for megatron-core's IndexedDataset files (<prefix>.bin + <prefix>.idx).

We write the format ourselves (byte layout of megatron/core/datasets/indexed_dataset.py, version 1) so that the
builder needs no torch/megatron import and streams: every sample is one sequence of exactly P tokens and one
document, so the index is a function of (sample count, P, dtype) and is written in one pass at the end.

.idx layout (little endian): b"MMIDIDX\\x00\\x00", u64 version=1, u8 dtype code, u64 sequence count n,
u64 document count n+1, int32 lengths[n], int64 byte pointers[n], int64 document indices[n+1] (0..n).
.bin: the tokens, sample after sample, in the dtype (uint16 when vocab < 65500, else int32).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}
_CHUNK = 1 << 20  # index entries written per block: memory stays flat for any sample count


def token_dtype(vocab_size: int) -> np.dtype:
    """The token dtype megatron-core picks for a vocabulary (DType.optimal_dtype)."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def write_index(idx_path: str | os.PathLike, dtype: np.dtype, num_sequences: int, seq_length: int) -> None:
    """Write the .idx for `num_sequences` sequences of `seq_length` tokens, one document each."""
    dtype = np.dtype(dtype)
    itemsize = dtype.itemsize
    with open(idx_path, "wb") as f:
        f.write(INDEX_MAGIC)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", _DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", num_sequences))
        f.write(struct.pack("<Q", num_sequences + 1))
        for start in range(0, num_sequences, _CHUNK):
            count = min(_CHUNK, num_sequences - start)
            f.write(np.full(count, seq_length, dtype="<i4").tobytes())
        for start in range(0, num_sequences, _CHUNK):
            idx = np.arange(start, min(start + _CHUNK, num_sequences), dtype="<i8")
            f.write((idx * (seq_length * itemsize)).astype("<i8").tobytes())
        for start in range(0, num_sequences + 1, _CHUNK):
            f.write(np.arange(start, min(start + _CHUNK, num_sequences + 1), dtype="<i8").tobytes())


@dataclass(frozen=True)
class IndexHeader:
    """The fixed part of an .idx file plus the array views our reader needs."""

    dtype: np.dtype
    sequence_count: int
    document_count: int
    lengths: np.ndarray
    pointers: np.ndarray


def read_index(idx_path: str | os.PathLike) -> IndexHeader:
    """Read an .idx (memory-mapped arrays); raises ValueError on a foreign or truncated file."""
    with open(idx_path, "rb") as f:
        head = f.read(34)
    if len(head) < 34 or head[:9] != INDEX_MAGIC:
        raise ValueError(f"{idx_path}: not a megatron IndexedDataset index (bad magic)")
    (version,) = struct.unpack("<Q", head[9:17])
    if version != INDEX_VERSION:
        raise ValueError(
            f"{idx_path}: unsupported .idx version {version} (this reader knows {INDEX_VERSION})"
        )
    code = head[17]
    if code not in _CODE_DTYPES:
        raise ValueError(f"{idx_path}: unknown token dtype code {code}")
    n, docs = struct.unpack("<QQ", head[18:34])
    expected = 34 + n * 4 + n * 8 + docs * 8
    if os.path.getsize(idx_path) < expected:
        raise ValueError(f"{idx_path}: truncated index ({os.path.getsize(idx_path)} < {expected} bytes)")
    mm = np.memmap(idx_path, mode="r", dtype=np.uint8)
    lengths = np.frombuffer(mm, dtype="<i4", count=n, offset=34)
    pointers = np.frombuffer(mm, dtype="<i8", count=n, offset=34 + n * 4)
    return IndexHeader(_CODE_DTYPES[code], int(n), int(docs), lengths, pointers)
