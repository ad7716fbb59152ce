"""The completion marker's manifest: every file of a checkpoint with its size and CRC32, checked on load.

`checkpoint_complete` holds JSON `{"manifest_version": 1, "hash": "crc32", "files": {relpath: {"size": n,
"crc32": "xxxxxxxx"}}}`. CRC32 catches truncated, zero-filled and bit-flipped files (accidents of disks,
copies and crashes); it is not a defence against someone who edits a checkpoint on purpose (see the Trust
section of docs/reliability.md). zlib's CRC32 was the fastest check in the standard library on our machine
(benchmarks/results/checkpoint_verify.md). Markers written before the manifest existed are empty: such a
checkpoint loads unverified, with a warning.

Pure standard library (no torch).
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
HASH_NAME = "crc32"
_CHUNK = 8 * 1024 * 1024


class CorruptCheckpointError(ValueError):
    """A checkpoint file is missing, has another size or another checksum than its manifest records."""


def file_crc32(path: str | os.PathLike) -> str:
    """CRC32 of a file's bytes as 8 hex digits (read in 8 MiB pieces)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def build_manifest(root: str | os.PathLike, skip: tuple[str, ...] = ()) -> dict:
    """Size and CRC32 of every file under `root` (relative POSIX paths), except the top-level names in `skip`."""
    root = Path(root)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in skip:
            continue
        files[rel] = {"size": path.stat().st_size, HASH_NAME: file_crc32(path)}
    return {"manifest_version": MANIFEST_VERSION, "hash": HASH_NAME, "files": files}


def manifest_text(root: str | os.PathLike, marker_name: str) -> str:
    """The marker's content for the checkpoint directory `root`."""
    return json.dumps(build_manifest(root, skip=(marker_name,)), indent=1, sort_keys=True) + "\n"


def verify(ckpt_dir: str | os.PathLike, marker_name: str) -> bool:
    """Check every file the marker lists; True when verified, False for an old empty marker (warned).

    Raises CorruptCheckpointError naming the directory and the first bad file.
    """
    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / marker_name
    text = marker.read_text(errors="replace")
    if not text.strip():
        logger.warning(
            "%s is empty (written before manifests existed): %s is loaded unverified", marker, ckpt_dir
        )
        return False
    files = _parse(marker, text)
    for rel, want in files.items():
        problem = _file_problem(ckpt_dir / rel, want)
        if problem:
            raise CorruptCheckpointError(f"checkpoint {ckpt_dir} is corrupt: {rel}: {problem}")
    return True


def _parse(marker: Path, text: str) -> dict:
    try:
        data = json.loads(text)
        files = data["files"]
        if data.get("hash") != HASH_NAME or not isinstance(files, dict):
            raise ValueError(f"unknown manifest (hash {data.get('hash')!r})")
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(f"checkpoint {marker.parent} is corrupt: {marker.name}: {err}") from None
    return files


def _file_problem(path: Path, want: dict) -> str | None:
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != want.get("size"):
        return f"{size} bytes, the manifest records {want.get('size')} (truncated or replaced)"
    got = file_crc32(path)
    if got != want.get(HASH_NAME):
        return f"{HASH_NAME} {got}, the manifest records {want.get(HASH_NAME)} (bytes changed)"
    return None
