"""Graceful stop on a signal (SLURM preemption sends SIGTERM before SIGKILL): finish the step, save, exit.

Each rank records the signal in a flag; after every step the flags are combined over all ranks (one 1-element
all-reduce) so that every rank stops after the same step and takes part in the collective checkpoint save.
"""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)


class StopSignal:
    """Installs a handler for `signal_name` (e.g. "SIGTERM"); `requested()` is True on every rank once any
    rank got the signal. Does nothing when `signal_name` is None or when not on the main thread."""

    def __init__(self, signal_name: str | None) -> None:
        self.received = False
        self.signum = None
        self._previous = None
        if signal_name is None or threading.current_thread() is not threading.main_thread():
            return
        try:
            self.signum = signal.Signals[signal_name]
        except KeyError:
            raise ValueError(
                f"--training.exit_signal: unknown signal {signal_name!r} (e.g. SIGTERM, SIGUSR1)"
            ) from None
        self._previous = signal.signal(self.signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = True
        logger.warning(
            "received %s: stopping after this step (a checkpoint will be saved)", signal.Signals(signum).name
        )

    def requested(self) -> bool:
        """Whether any rank received the signal (collective when the world has more than one rank)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self.received
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        flag = torch.tensor([int(self.received)], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def send_to_self(self) -> None:
        """Fault injection (`--debug.signal_at_step`): deliver the stop signal to this process."""
        if self.signum is not None:
            signal.raise_signal(self.signum)

    def restore(self) -> None:
        if self.signum is not None and self._previous is not None:
            signal.signal(self.signum, self._previous)
