"""Ctrl-C at the end of a step: the first Ctrl-C only asks the loop to stop; the trainer then writes a
checkpoint of the last finished step and raises :class:`splat.train.errors.TrainingInterrupted`."""

from __future__ import annotations

import contextlib
import signal
import threading


class InterruptHandler:
    """In the main thread, the first Ctrl-C sets :attr:`requested`; a second one interrupts at once.
    A distributed run (torchrun stops its workers with SIGTERM) treats SIGTERM the same way."""

    def __init__(self):
        self.requested = False

    @contextlib.contextmanager
    def armed(self, distributed: bool = False):
        self.requested = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        signals = [signal.SIGINT, signal.SIGTERM] if distributed else [signal.SIGINT]
        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
