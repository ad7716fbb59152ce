"""The on-disk layout of our Megatron checkpoints, in one place: file names, the `latest` marker, the completion
marker, iteration directory names, and which directory a path means.

A checkpoint directory holds a megatron-core distributed checkpoint (megatron's `metadata.json` and shards) plus
`MODEL_CONFIG_FILE` (`ModelConfig.to_dict()`); converters and training write it. A training save root holds
`iter_XXXXXXX/` checkpoint directories (complete once `COMPLETE_MARKER` is in them) and a `latest` file naming
one. `find_latest` is the one reader of `latest`. It never starts over silently: `latest` must name a complete
iteration directory inside the save dir (a bare name: no path, no `..`); when it does not, the newest complete
iteration is used with a warning naming both, or, with none, CheckpointError names the file. A save dir whose
iteration directories are all incomplete is an error too, unless the caller allows a fresh start. `.tmp`
directories (interrupted saves) never count. `resolve_checkpoint_dir` applies this to a path given by the user.

Writing (atomic saves, keep-last-N) is training's (`training/checkpoint_io.py`); conversion, training and
evaluation all read through this module. Pure standard library, importing nothing of ours: it sits below
`training` and `convert`, which both use it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "endprompt_model.json"
"""Name of the ModelConfig JSON stored in every Megatron checkpoint dir (written by convert / save_checkpoint)."""
MEGATRON_METADATA_FILE = "metadata.json"
"""megatron-core's distributed-checkpoint metadata, present in every checkpoint directory."""
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


def list_checkpoints(save_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    return [p for p in iteration_dirs(save_dir) if is_complete(p)]


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """True for a checkpoint directory itself (not a save root): it holds our model JSON or megatron's metadata."""
    path = Path(path)
    return (path / MODEL_CONFIG_FILE).is_file() or (path / MEGATRON_METADATA_FILE).is_file()


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path | None:
    """The checkpoint directory `path` means: itself when it is one, else the one `find_latest` picks under it as
    a save root (CheckpointError when that refuses), or None when it holds no iteration at all."""
    path = Path(path)
    if is_checkpoint_dir(path):
        return path
    return find_latest(path)
