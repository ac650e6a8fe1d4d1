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
    """Ctrl-C during training: a checkpoint of the last finished step was written; ``resume_command``
    continues the run (it ends bit-identical to an uninterrupted one on CPU)."""

    def __init__(self, step: int, checkpoint: Path, resume_command: str):
        super().__init__(f"interrupted at step {step}; wrote {checkpoint}\nresume with: {resume_command}")
        self.step = step
        self.checkpoint = checkpoint
        self.resume_command = resume_command

    def __str__(self) -> str:
        return str(self.args[0])
