"""Crash-safe checkpoint saves: atomic commit, the `latest` marker's writing, keep-last-N, set-aside.

A save goes through three states, so that a crash at any point leaves the previous checkpoint usable:

1. `begin_save` creates `<save>/iter_XXXXXXX.tmp/` (removing leftovers of an interrupted save);
2. the caller writes everything into it;
3. `commit_save` writes the completion marker (a manifest: size and CRC32 of every file, see
   `checkpoint_manifest`), fsyncs every file, renames the directory to `iter_XXXXXXX` (atomic on POSIX), then
   replaces `<save>/latest` (text: the directory name) via a temp file + os.replace, and only then deletes
   checkpoints beyond `keep_last`. An existing `iter_XXXXXXX` is never replaced.

Names, the `latest` marker's reading (`find_latest`), the completion marker and directory resolution are
`megatron_endprompt.checkpoint_layout`'s (re-exported here for training's callers).

Pure standard library (no torch): run these on one rank, with barriers around them in distributed code.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from megatron_endprompt.checkpoint_layout import (
    ASIDE_SUFFIX,
    COMPLETE_MARKER,
    LATEST_FILE,
    CheckpointError,
    checkpoint_name,
    find_latest,
    is_complete,
    iteration_dirs,
    iteration_of,
    list_checkpoints,
)
from megatron_endprompt.training import checkpoint_manifest

__all__ = [  # the layout names are re-exported: training's callers import them from here
    "ASIDE_SUFFIX", "COMPLETE_MARKER", "LATEST_FILE", "CheckpointError", "begin_save", "checkpoint_name",
    "commit_save", "find_latest", "fsync_tree", "is_complete", "iteration_dirs", "iteration_of",
    "list_checkpoints", "prune_checkpoints", "set_aside", "set_aside_after", "verify_checkpoint",
    "write_text_atomic",
]  # fmt: skip

logger = logging.getLogger(__name__)


def begin_save(save_dir: str | os.PathLike, iteration: int) -> Path:
    """Create an empty `iter_XXXXXXX.tmp` directory to write into; stale temp dirs are removed first."""
    save_dir = Path(save_dir)
    _refuse_existing(save_dir / checkpoint_name(iteration))
    save_dir.mkdir(parents=True, exist_ok=True)
    for stale in save_dir.glob("iter_*.tmp"):
        logger.warning("removing the leftovers of an interrupted save: %s", stale)
        shutil.rmtree(stale)
    tmp = save_dir / (checkpoint_name(iteration) + ".tmp")
    tmp.mkdir()
    return tmp


def commit_save(save_dir: str | os.PathLike, iteration: int, keep_last: int | None = None) -> Path:
    """Write the manifest marker, make the temp directory durable, move it into place, update `latest`, prune."""
    save_dir = Path(save_dir)
    tmp = save_dir / (checkpoint_name(iteration) + ".tmp")
    final = save_dir / checkpoint_name(iteration)
    if not tmp.is_dir():
        raise FileNotFoundError(f"commit_save: {tmp} does not exist (begin_save was not called?)")
    _refuse_existing(final)
    (tmp / COMPLETE_MARKER).write_text(checkpoint_manifest.manifest_text(tmp, COMPLETE_MARKER))
    fsync_tree(tmp)
    os.rename(tmp, final)
    _fsync_dir(save_dir)
    write_text_atomic(save_dir / LATEST_FILE, final.name + "\n")
    if keep_last is not None:
        prune_checkpoints(save_dir, keep_last)
    return final


def _refuse_existing(final: Path) -> None:
    if final.exists():
        raise CheckpointError(
            f"{final} already exists; a save never replaces an iteration directory. Resume from it (rerun with "
            "the same --checkpoint.save), or give another --checkpoint.save"
        )


def set_aside(path: str | os.PathLike) -> Path:
    """Rename an iteration directory to `<name>.aside` (`.aside2`, ... when taken): kept, but never resumed from
    or overwritten. Returns the new path."""
    path = Path(path)
    target, n = path.with_name(path.name + ASIDE_SUFFIX), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{ASIDE_SUFFIX}{n}")
    os.rename(path, target)
    _fsync_dir(path.parent)
    logger.warning("moved %s out of the way to %s (not deleted)", path, target)
    return target


def set_aside_after(save_dir: str | os.PathLike, iteration: int | None) -> list[Path]:
    """Set aside every iteration directory newer than `iteration` (all of them for None): a run that resumes at
    `iteration` will save those names again."""
    return [
        set_aside(p) for p in iteration_dirs(save_dir) if iteration is None or iteration_of(p) > iteration
    ]


def verify_checkpoint(path: str | os.PathLike) -> bool:
    """Check the files of a committed checkpoint against its manifest (CorruptCheckpointError names the file);
    False for an old checkpoint without a manifest."""
    return checkpoint_manifest.verify(path, COMPLETE_MARKER)


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
