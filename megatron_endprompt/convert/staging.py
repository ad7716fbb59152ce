"""All-or-nothing output directories: write into a hidden temp dir next to the target, rename at the end."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from megatron_endprompt.convert.errors import ConversionError

logger = logging.getLogger(__name__)


def check_output_dir(target: str | Path, overwrite: bool, flag: str) -> Path:
    """Refuse an existing non-empty `target` unless `overwrite`; returns it as an absolute Path."""
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise ConversionError(f"{flag}: {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConversionError(
            f"{flag}: output directory {target} is not empty; pass --overwrite to replace it"
        )
    return target


def refuse_overwriting_input(output: str | Path, out_flag: str, inputs: dict[str, str | Path | None]) -> None:
    """With --overwrite, refuse an output that is an input, lies inside one, or contains one.

    `staged_dir` replaces the whole output directory at the end, so such an output would delete the source
    (or write the result into the tree being read). Symlinks are resolved on both sides. Call this before
    anything is read or written.
    """
    out = Path(output).resolve()
    for in_flag, path in inputs.items():
        if path is None:
            continue
        src = Path(path).resolve()
        if out == src:
            how = "is the same directory as"
        elif src in out.parents:
            how = "lies inside"
        elif out in src.parents:
            how = "contains"
        else:
            continue
        raise ConversionError(
            f"{out_flag} {out} {how} {in_flag} {src}; --overwrite would delete or rewrite the input. "
            f"Choose an {out_flag} outside {in_flag}"
        )


@contextlib.contextmanager
def staged_dir(target: str | Path, overwrite: bool, flag: str) -> Iterator[Path]:
    """Yield a temp dir next to `target`; on success it replaces `target`, on error it is removed.

    Parent directories that did not exist are created and, on error, removed again, so a failed
    conversion leaves the file system as it found it.
    """
    target = check_output_dir(target, overwrite, flag)
    created = [p for p in reversed(target.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def _replace(tmp: Path, target: Path) -> None:
    """Move `tmp` to `target`; an existing target is moved aside first and deleted only after the rename."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("wrote %s", target)
