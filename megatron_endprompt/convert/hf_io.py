"""Streaming access to HF weight files: read tensor by tensor, write size-bounded safetensors shards.

Reading uses `safetensors.safe_open`, so only the tensor asked for is materialised. Pickle files
(`pytorch_model*.bin`) can run arbitrary code when loaded; they are refused unless the caller opts in, also when
an index names them. Weight files must lie inside the model directory (see `check_weight_file`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_endprompt.convert.errors import ConversionError

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


class HFReader:
    """Tensor-by-tensor reader over a HF model directory (sharded or single-file safetensors)."""

    def __init__(self, hf_dir: str | Path, allow_pickle: bool = False):
        self.hf_dir = Path(hf_dir)
        self._handles: dict[str, object] = {}
        self._pickled: dict[str, dict[str, torch.Tensor]] = {}
        self.file_of = self._index(allow_pickle)

    def _index(self, allow_pickle: bool) -> dict[str, str]:
        index = self.hf_dir / SAFETENSORS_INDEX
        if index.is_file():
            weight_map = _read_weight_map(index)
            for fname in sorted(set(weight_map.values())):
                check_weight_file(self.hf_dir, fname, allow_pickle, f"{SAFETENSORS_INDEX} entry")
            return weight_map
        files = sorted(p.name for p in self.hf_dir.glob("*.safetensors"))
        if files:
            for fname in files:
                check_weight_file(self.hf_dir, fname, allow_pickle, "weight file")
            return {name: fname for fname in files for name in self._handle(fname).keys()}
        pickles = sorted(p.name for p in self.hf_dir.glob("pytorch_model*.bin"))
        if not pickles:
            raise ConversionError(f"--hf-dir: no *.safetensors (or {SAFETENSORS_INDEX}) in {self.hf_dir}")
        if not allow_pickle:
            raise ConversionError(
                f"--hf-dir: {self.hf_dir} holds only pickle weights ({', '.join(pickles)}); loading pickles can "
                "run arbitrary code. Convert them to safetensors, or pass --allow-pickle if you trust the files"
            )
        for fname in pickles:
            check_weight_file(self.hf_dir, fname, allow_pickle, "weight file")
        return {name: fname for fname in pickles for name in self._pickle(fname)}

    def _handle(self, fname: str):
        if fname not in self._handles:
            self._handles[fname] = safe_open(str(self.hf_dir / fname), framework="pt", device="cpu")
        return self._handles[fname]

    def _pickle(self, fname: str) -> dict[str, torch.Tensor]:
        if fname not in self._pickled:
            # mmap keeps the file on disk; weights_only refuses arbitrary objects.
            self._pickled[fname] = torch.load(
                self.hf_dir / fname, map_location="cpu", mmap=True, weights_only=True
            )
        return self._pickled[fname]

    def names(self) -> set[str]:
        return set(self.file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape without reading the data."""
        fname = self.file_of[name]
        if fname.endswith(".bin"):
            return tuple(self._pickle(fname)[name].shape)
        return tuple(self._handle(fname).get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        fname = self.file_of[name]
        if fname.endswith(".bin"):
            return self._pickle(fname)[name].dtype
        return _SAFETENSORS_DTYPES[self._handle(fname).get_slice(name).get_dtype()]

    def get(self, name: str) -> torch.Tensor:
        fname = self.file_of[name]
        if fname.endswith(".bin"):
            return self._pickle(fname)[name].clone()
        return self._handle(fname).get_tensor(name)


def _read_weight_map(index: Path) -> dict[str, str]:
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConversionError(f"--hf-dir: {index} is not a valid index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ConversionError(f"--hf-dir: {index}: weight_map must map tensor names to file names")
    return dict(weight_map)


def _allowed_roots(hf_dir: Path) -> list[Path]:
    """Where weight files may live: inside --hf-dir, and for a Hugging Face hub cache snapshot
    (`.../snapshots/<revision>`, whose files are symlinks to `../../blobs/<hash>`) in that cache's `blobs/`."""
    root = hf_dir.resolve()
    roots = [root]
    if root.parent.name == "snapshots":
        roots.append(root.parent.parent / "blobs")
    return roots


def check_weight_file(hf_dir: Path, fname: str, allow_pickle: bool, what: str) -> None:
    """Refuse a weight file outside --hf-dir (absolute, `..`, or a symlink leading out), one that is missing,
    or a pickle (`.bin`) without --allow-pickle: an index must not widen what a plain directory may do."""
    rel = Path(fname)
    if rel.is_absolute() or ".." in rel.parts:
        raise ConversionError(
            f"--hf-dir: {what} {fname!r} is an absolute path or contains '..'; weight files must lie inside {hf_dir}"
        )
    path = hf_dir / rel
    resolved = path.resolve()
    if not any(resolved == r or r in resolved.parents for r in _allowed_roots(hf_dir)):
        raise ConversionError(
            f"--hf-dir: {what} {fname!r} is a symlink to {resolved}, outside {hf_dir}; refused"
        )
    if fname.endswith(".bin"):
        if not allow_pickle:
            raise ConversionError(
                f"--hf-dir: {what} {fname!r} is pickle weights; loading pickles can run arbitrary code. "
                "Convert them to safetensors, or pass --allow-pickle if you trust the files"
            )
    elif not fname.endswith(".safetensors"):
        raise ConversionError(f"--hf-dir: {what} {fname!r} is neither .safetensors nor .bin")
    if not path.is_file():
        raise ConversionError(f"--hf-dir: {what} {fname!r} does not exist in {hf_dir}")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _owning(t: torch.Tensor) -> torch.Tensor:
    """A tensor that owns exactly its bytes (safetensors refuses views sharing a storage)."""
    t = t.detach().contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def write_hf_shards(
    out_dir: Path, tensors: Iterable[tuple[str, torch.Tensor]], max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> list[str]:
    """Write (name, tensor) pairs as HF safetensors shards; returns the file names.

    One shard is written as `model.safetensors`; several as `model-0000k-of-0000n.safetensors` plus
    `model.safetensors.index.json`. At most one shard is held in memory.
    """
    parts: list[str] = []
    weight_map: dict[str, int] = {}
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = total = 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        fname = f"part-{len(parts):05d}.safetensors"
        save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        parts.append(fname)
        shard, shard_bytes = {}, 0

    for name, tensor in tensors:
        tensor = _owning(tensor)
        size = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + size > max_shard_bytes:
            flush()
        shard[name] = tensor
        weight_map[name] = len(parts)
        shard_bytes += size
        total += size
    if shard or not parts:
        flush()
    return _finalise_names(out_dir, parts, weight_map, total)


def _finalise_names(out_dir: Path, parts: list[str], weight_map: dict[str, int], total: int) -> list[str]:
    n = len(parts)
    names = (
        ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    )
    for tmp, final in zip(parts, names, strict=True):
        (out_dir / tmp).rename(out_dir / final)
    if n > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {name: names[k] for name, k in sorted(weight_map.items())},
        }
        with open(out_dir / SAFETENSORS_INDEX, "w") as f:
            json.dump(index, f, indent=2)
    return names
