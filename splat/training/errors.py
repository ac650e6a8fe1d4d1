"""How a training run stops early: :class:`TrainingDiverged` and :class:`TrainingInterrupted` (no torch here,
so that the command line can name them without loading it)."""

from __future__ import annotations

from pathlib import Path


class TrainingDiverged(RuntimeError):
    """A loss or parameter became non-finite (or every Gaussian left the view). Nothing non-finite was
    written; ``checkpoint`` is the last good one on disk (None if the run wrote none)."""

    def __init__(self, message: str, step: int, what: str, checkpoint: Path | None):
        super().__init__(message)
        self.step = step
        self.what = what
        self.checkpoint = checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during training: a checkpoint of the last finished step was written; ``resume_command``
    continues the run (it ends bit-identical to an uninterrupted one on CPU)."""

    def __init__(self, step: int, checkpoint: Path, resume_command: str, signum: int = 2):
        what = "interrupted" if signum == 2 else f"stopped by signal {signum}"  # 2: SIGINT (Ctrl-C)
        super().__init__(f"{what} at step {step}; wrote {checkpoint}\nresume with: {resume_command}")
        self.signum = signum  # the command line exits 128 + signum (130 for Ctrl-C, 143 for SIGTERM)
        self.step = step
        self.checkpoint = checkpoint
        self.resume_command = resume_command

    def __str__(self) -> str:
        return str(self.args[0])
