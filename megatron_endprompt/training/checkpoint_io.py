"""Crash-safe checkpoint directories: naming, atomic commit, the `latest` marker, keep-last-N.

A save goes through three states, so that a crash at any point leaves the previous checkpoint usable:

1. `begin_save` creates `<save>/iter_XXXXXXX.tmp/` (removing leftovers of an interrupted save);
2. the caller writes everything into it;
3. `commit_save` writes the completion marker (a manifest: size and CRC32 of every file, see
   `checkpoint_manifest`), fsyncs every file, renames the directory to `iter_XXXXXXX` (atomic on POSIX), then
   replaces `<save>/latest` (text: the directory name) via a temp file + os.replace, and only then deletes
   checkpoints beyond `keep_last`. An existing `iter_XXXXXXX` is never replaced.

`find_latest` is the one reader of `latest` (training and the converters use it). It never starts over silently:
`latest` must name a complete iteration directory inside the save dir (a bare name: no path, no `..`); when it
does not, the newest complete iteration is used with a warning naming both, or, with none, CheckpointError names
the file. A save dir whose iteration directories are all incomplete is an error too, unless the caller allows a
fresh start. `.tmp` directories (interrupted saves) never count.

Pure standard library (no torch): run these on one rank, with barriers around them in distributed code.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from megatron_endprompt.training import checkpoint_manifest

logger = logging.getLogger(__name__)

LATEST_FILE = "latest"
COMPLETE_MARKER = "checkpoint_complete"
"""Written last into a checkpoint directory before it is renamed into place; holds the manifest (JSON)."""
ASIDE_SUFFIX = ".aside"
"""Suffix of iteration directories moved out of the way instead of being deleted or overwritten."""
_NAME = re.compile(r"^iter_(\d{7,})$")


class CheckpointError(ValueError):
    """A save dir or checkpoint that cannot be used as asked; the message names the file and the way out."""


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


def find_latest(save_dir: str | os.PathLike, *, allow_fresh_start: bool = False) -> Path | None:
    """The checkpoint to resume from under `save_dir`, or None when it holds no iteration (see module docstring).

    allow_fresh_start: return None instead of raising when iteration directories exist but none is complete.
    """
    save_dir = Path(save_dir)
    marker = save_dir / LATEST_FILE
    named, problem = _read_latest(save_dir) if marker.is_file() else (None, None)
    if named is not None:
        return named
    complete = list_checkpoints(save_dir)
    if problem and complete:
        logger.warning(
            "%s %s; resuming from the newest complete checkpoint, %s", marker, problem, complete[-1]
        )
    if complete:
        return complete[-1]
    if problem and not allow_fresh_start:
        raise CheckpointError(
            f"{marker} {problem}, and no iteration under {save_dir} is complete: nothing to resume from. "
            "Fix or remove the file, or pass --checkpoint.allow_fresh_start true to start at step 0"
        )
    started = iteration_dirs(save_dir)
    if started and not allow_fresh_start:
        raise CheckpointError(
            f"{save_dir} holds {[p.name for p in started]} but none is complete (no {COMPLETE_MARKER}): nothing "
            "to resume from. Move them away, or pass --checkpoint.allow_fresh_start true to start at step 0 "
            f"(they are then renamed to *{ASIDE_SUFFIX}, not deleted)"
        )
    return None


def _read_latest(save_dir: Path) -> tuple[Path | None, str | None]:
    """(the complete directory `latest` names, None) or (None, what is wrong with it)."""
    try:
        text = (save_dir / LATEST_FILE).read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"is unreadable ({err})"
    name = checkpoint_name(int(text)) if text.isdigit() else text
    if not _NAME.match(name):  # the whole text: absolute paths, `..` and subdirectories are refused
        return (
            None,
            f"names {text!r}, which is not an iteration directory name (iter_XXXXXXX) inside {save_dir}",
        )
    if not is_complete(save_dir / name):
        return None, f"names {name!r}, which is not a complete checkpoint"
    return save_dir / name, None


def iteration_dirs(save_dir: str | os.PathLike) -> list[Path]:
    """Every `iter_XXXXXXX` directory, complete or not, oldest first (`.tmp` and set-aside ones excluded)."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    found = [(iteration_of(p), p) for p in save_dir.iterdir() if p.is_dir() and iteration_of(p) is not None]
    return [p for _, p in sorted(found)]


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


def list_checkpoints(save_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    return [p for p in iteration_dirs(save_dir) if is_complete(p)]


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
