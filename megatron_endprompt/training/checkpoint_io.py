"""Crash-safe checkpoint directories: naming, atomic commit, the `latest` marker, keep-last-N.

A save goes through three states, so that a crash at any point leaves the previous checkpoint usable:

1. `begin_save` creates `<save>/iter_XXXXXXX.tmp/` (removing leftovers of an interrupted save);
2. the caller writes everything into it;
3. `commit_save` writes the completion marker, fsyncs every file, renames the directory to `iter_XXXXXXX`
   (atomic on POSIX), then replaces `<save>/latest` (text: the directory name) via a temp file + os.replace, and
   only then deletes checkpoints beyond `keep_last`.

`find_latest` trusts `latest` only when it names a complete directory, and otherwise falls back to the newest
complete `iter_*` directory; `.tmp` directories and directories without the marker are never picked.

Pure standard library (no torch): run these on one rank, with barriers around them in distributed code.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

LATEST_FILE = "latest"
COMPLETE_MARKER = "checkpoint_complete"
"""Empty file written last into a checkpoint directory before it is renamed into place."""
_NAME = re.compile(r"^iter_(\d{7,})$")


def checkpoint_name(iteration: int) -> str:
    """Directory name of the checkpoint taken after `iteration` optimizer steps."""
    if iteration < 0:
        raise ValueError(f"checkpoint iteration must be >= 0, got {iteration}")
    return f"iter_{iteration:07d}"


def iteration_of(path: str | os.PathLike) -> int | None:
    """The iteration encoded in a checkpoint directory name, or None for other names."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: str | os.PathLike) -> bool:
    """True for a directory that a finished save committed."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def begin_save(save_dir: str | os.PathLike, iteration: int) -> Path:
    """Create an empty `iter_XXXXXXX.tmp` directory to write into; stale temp dirs are removed first."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    for stale in save_dir.glob("iter_*.tmp"):
        logger.warning("removing the leftovers of an interrupted save: %s", stale)
        shutil.rmtree(stale)
    tmp = save_dir / (checkpoint_name(iteration) + ".tmp")
    tmp.mkdir()
    return tmp


def commit_save(save_dir: str | os.PathLike, iteration: int, keep_last: int | None = None) -> Path:
    """Mark the temp directory complete, make it durable, move it into place, update `latest`, prune."""
    save_dir = Path(save_dir)
    tmp = save_dir / (checkpoint_name(iteration) + ".tmp")
    final = save_dir / checkpoint_name(iteration)
    if not tmp.is_dir():
        raise FileNotFoundError(f"commit_save: {tmp} does not exist (begin_save was not called?)")
    (tmp / COMPLETE_MARKER).touch()
    fsync_tree(tmp)
    if final.exists():  # re-saving the same iteration (e.g. after a resume): replace it
        _retire(final)
    os.rename(tmp, final)
    _fsync_dir(save_dir)
    write_text_atomic(save_dir / LATEST_FILE, final.name + "\n")
    if keep_last is not None:
        prune_checkpoints(save_dir, keep_last)
    return final


def find_latest(save_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory under `save_dir` (None when there is none)."""
    save_dir = Path(save_dir)
    marker = save_dir / LATEST_FILE
    if marker.is_file():
        named = save_dir / marker.read_text().strip()
        if named.name and iteration_of(named) is not None and is_complete(named):
            return named
        logger.warning(
            "%s names %r, which is not a complete checkpoint; scanning the directory", marker, named.name
        )
    complete = list_checkpoints(save_dir)
    return complete[-1] if complete else None


def list_checkpoints(save_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    found = [(iteration_of(p), p) for p in save_dir.iterdir() if p.is_dir() and iteration_of(p) is not None]
    return [p for _, p in sorted(found) if is_complete(p)]


def prune_checkpoints(save_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete complete checkpoints older than the newest `keep_last` (never the one `latest` names)."""
    if keep_last < 1:
        raise ValueError(f"--checkpoint.keep_last must be >= 1, got {keep_last}")
    latest = find_latest(save_dir)
    doomed = [p for p in list_checkpoints(save_dir)[:-keep_last] if p != latest]
    for path in doomed:
        _retire(path)
    return doomed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new content, never a mix. The temp file
    is per process, so that several writers of the same file (processes sharing a cache) never collide."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under `root` (data reaches the disk before the rename publishes it)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _retire(path: Path) -> None:
    """Delete a checkpoint: first drop its marker (so a crash mid-delete never leaves a 'complete' husk)."""
    (path / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(path)
