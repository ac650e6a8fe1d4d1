"""Ctrl-C (SIGINT) or SIGTERM (what schedulers and torchrun send) at the end of a step: the first one only
asks the loop to stop; the trainer then writes a checkpoint of the last finished step and raises
:class:`splat.training.errors.TrainingInterrupted` (the command line exits 128 + the signal's number)."""

from __future__ import annotations

import contextlib
import signal
import threading


class InterruptHandler:
    """In the main thread, the first Ctrl-C or SIGTERM sets :attr:`requested` (and :attr:`signum`); a second
    one interrupts at once."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT

    @contextlib.contextmanager
    def armed(self, distributed: bool = False):
        self.requested = False
        self.signum = signal.SIGINT
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            self.signum = signum

        signals = [signal.SIGINT, signal.SIGTERM]
        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
