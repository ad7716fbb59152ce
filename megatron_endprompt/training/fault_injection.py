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
from collections.abc import Callable, Iterator
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
def kill_during_save(
    kill_at: int | None, save_dir: str, iteration: int
) -> Iterator[Callable[[], None] | None]:
    """While the checkpoint of `kill_at` is written: SIGKILL as soon as a file appears in its temporary
    directory (a half-written checkpoint), and at the latest in the save's `before_commit` hook, once everything
    is written but before the directory is published. Yields the hook to pass to `save_checkpoint`."""
    if kill_at is None or iteration != kill_at:
        yield None
        return
    stop = threading.Event()
    tmp = Path(save_dir) / f"iter_{iteration:07d}.tmp"

    def watch() -> None:
        while not stop.is_set():
            if tmp.is_dir() and any(tmp.iterdir()):
                _die(f"while {tmp} was being written")
            stop.wait(0.0005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield lambda: _die(f"before committing {tmp}")
    finally:
        stop.set()
