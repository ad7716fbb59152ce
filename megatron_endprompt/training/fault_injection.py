"""Deterministic crash points for resume tests (`--debug.kill_at_step`, `--debug.kill_during_save_at`).

Both send SIGKILL to the process itself, which is what a node failure or `kill -9` looks like to the run: no
Python cleanup, no flushing. Inactive unless the debug flags are set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def _die(reason: str) -> None:
    logger.error("fault injection: SIGKILL %s", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_step(kill_at_step: int | None, iteration: int) -> None:
    """SIGKILL right after optimizer step `kill_at_step` (before it is logged or saved)."""
    if kill_at_step is not None and iteration == kill_at_step:
        _die(f"after step {iteration}")


@contextlib.contextmanager
def kill_during_save(kill_at: int | None, save_dir: str, iteration: int) -> Iterator[None]:
    """While the checkpoint of `kill_at` is written: SIGKILL as soon as a file appears in its temporary
    directory, and at the latest when the save tries to rename that directory into place (so the kill
    always lands before the checkpoint is committed)."""
    if kill_at is None or iteration != kill_at:
        yield
        return
    stop = threading.Event()
    prefix = f"iter_{iteration:07d}"

    def watch() -> None:
        while not stop.is_set():
            for tmp in Path(save_dir).glob(prefix + "*.tmp"):
                if tmp.is_dir() and any(tmp.iterdir()):
                    _die(f"while {tmp} was being written")
            stop.wait(0.0005)

    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if str(src).endswith(".tmp") and Path(src).name.startswith(prefix):
            _die(f"before committing {src}")
        return real_rename(src, dst, *args, **kwargs)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    os.rename = rename
    try:
        yield
    finally:
        os.rename = real_rename
        stop.set()
