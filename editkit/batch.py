"""Edit many photos: in one process, or split across processes started by ``accelerate launch`` / ``torchrun``.

    accelerate launch --multi_gpu --num_processes 4 -m editkit.cli edit *.jpg --pairs prompts.tsv --output out/

From Python, :func:`edit_photos` is the same run (call it in every process of a launch, or in a plain one)::

    >>> from editkit.batch import EditJob, edit_photos
    >>> job = EditJob(pairs=[("a cat on a table", ["a dog on a table"])], inversion="direct")
    >>> summary = edit_photos(["a.jpg", "b.jpg"], job, model="stable-diffusion-v1-5/stable-diffusion-v1-5",
    ...                       output="out")
    >>> summary.failed, summary.exit_code

How the work is shared (``accelerate.PartialState``):

- the photos are dealt out in turn (photo ``i`` to process ``i % N``), so slow photos, which often come
  together (a folder of large ones), are spread over the processes and everyone finishes at about the same
  time; every process edits its share with the same per-photo code as a single-process run, so the files and
  their names are the same whatever the number of processes;
- the main process loads the pipeline first (a Hub download happens once, into the shared cache), then the
  others load it, each on its own device (``cuda:LOCAL_RANK`` on GPUs, the CPU with gloo otherwise); a model
  the main process cannot find stops every process (``ModelNotFoundError``);
- the processes wait for each other (the main process's load, the final gather) under a long timeout
  (:data:`WAIT_LIMIT`, not the process group's default of 10 or 30 minutes, which a slow load or a slow share
  of photos can outlast: the job was then killed before the summary was written);
- nothing depends on a process's random stream: photo edits are deterministic given the photo, the prompts and
  the settings (DDIM inversion and sampling with eta = 0; the run seed is handed to every photo unchanged, as
  the single-process command always did, and the engine does not draw from it); a run seed of ``None`` is
  drawn once on the main process and shared, and it is recorded in the summary;
- one bad photo (unreadable, too large, a prompt the engine refuses for it, out of GPU memory on it) is
  recorded with its error and the others go on; a process that cannot go on (out of memory while loading the
  model, or a bug) records the photos it did not edit with the reason and still takes part in the gather, so
  the main process always writes the summary (JSON, atomically) of what was written and prints a short table
  on stderr; a bug is raised again afterwards in the process that met it (exit code 1, with its traceback).

``accelerate`` is imported only when a batch runs (it adds about 0.2 s to ``import editkit``'s 2.2 s).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from .jobs import InputError, InversionCache, P2PSettings, edit_photo_p2p, edit_photo_pnp, plan_p2p
from .models import ModelNotFoundError

__all__ = [
    "SUMMARY_NAME",
    "BatchSummary",
    "EditJob",
    "InputResult",
    "check_photo_names",
    "edit_photo_files",
    "edit_photos",
    "launched",
    "share_of",
    "slug",
]

SUMMARY_NAME = "summary.json"  # default summary file, in the output folder

# How long a process waits for the others (the main process's model load, which may be a download of several
# GB, and the other shares before the gather). A process that dies ends the launch sooner: torchrun's agent then
# stops the others.
WAIT_LIMIT = timedelta(hours=12)

# Set in every process started by torchrun / accelerate launch (multi-process) or by MPI, and by accelerate's
# single-process launcher (ACCELERATE_DYNAMO_BACKEND).
_LAUNCH_VARIABLES = (
    "WORLD_SIZE",
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "ACCELERATE_DYNAMO_BACKEND",
)


def launched() -> bool:
    """True in a process started by ``accelerate launch``, ``torchrun`` or ``mpirun``."""
    return any(name in os.environ for name in _LAUNCH_VARIABLES)


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe version of a prompt: ``"a dog, smiling"`` -> ``"a_dog_smiling"``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit] or "prompt"


@dataclass(kw_only=True)
class EditJob:
    """What is done to every photo: the prompt pairs and the method's settings (the CLI's options)."""

    pairs: list[
        tuple[str, list[str]]
    ]  # (source prompt, target prompts); every pair is applied to every photo
    method: str = "p2p"  # "p2p" (Prompt-to-Prompt on an inversion) or "pnp" (Plug-and-Play)
    settings: P2PSettings = field(default_factory=P2PSettings)  # p2p only
    inversion: str = "null-text"  # p2p only
    steps: int = 50
    guidance: float = 7.5
    seed: int | None = 0  # None: drawn once per run (on the main process of a launch)
    heatmaps: bool = False  # p2p only
    keep_aspect: bool = False
    pnp_f_t: float = 0.8  # pnp only
    pnp_attn_t: float = 0.5  # pnp only
    progress: bool = True

    def check(self) -> None:
        """Everything that can be checked without the model; raises :class:`InputError` naming the problem."""
        if self.method not in ("p2p", "pnp"):
            raise InputError(f"method must be 'p2p' or 'pnp', got {self.method!r}")
        if not self.pairs:
            raise InputError("no prompt pairs to apply")
        if self.method == "p2p":
            for source, targets in self.pairs:
                plan_p2p(self.settings, source, targets)


@dataclass
class InputResult:
    """What became of one photo of a batch."""

    image: str  # the path as given
    ok: bool
    files: list[str] = field(default_factory=list)  # names in the output folder, in the order written
    error: str | None = None  # one line, for a failed photo
    process: int = 0  # the process that edited it


@dataclass
class BatchSummary:
    """Every photo of a batch, in the order given, with its files or its error."""

    inputs: list[InputResult]
    output: str
    processes: int
    seed: int | None
    method: str
    summary_file: str | None = None  # where the main process wrote it

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.inputs)

    @property
    def exit_code(self) -> int:
        """0 when every photo was edited, 4 when at least one failed (the CLI's exit code)."""
        return 4 if self.failed else 0

    def to_json(self) -> dict:
        return {
            "output": self.output,
            "method": self.method,
            "seed": self.seed,
            "processes": self.processes,
            "edited": len(self.inputs) - self.failed,
            "failed": self.failed,
            "inputs": [asdict(r) for r in self.inputs],
        }

    def table(self) -> str:
        """A short table for stderr: one line per photo."""
        lines = [
            f"summary: {len(self.inputs) - self.failed} of {len(self.inputs)} photo(s) edited, "
            f"{self.failed} failed" + (f" ({self.summary_file})" if self.summary_file else "")
        ]
        width = min(40, max((len(r.image) for r in self.inputs), default=0))
        for r in self.inputs:
            what = f"{len(r.files)} file(s)" if r.ok else r.error
            lines.append(f"  {'ok' if r.ok else 'FAILED':<6}  {r.image:<{width}}  {what}")
        return "\n".join(lines)


def _stem(image) -> str:
    return slug(Path(image).stem)


def check_photo_names(images: Sequence) -> None:
    """Refuse a photo given twice, and two photos whose output names would be the same file: the same name, or
    names that differ only in case (one file on macOS's and Windows' case-insensitive file systems)."""
    paths: dict[str, str] = {}
    stems: dict[str, tuple[str, str]] = {}
    for image in images:
        real = os.path.realpath(os.path.expanduser(str(image)))
        if real in paths:
            same = "" if paths[real] == str(image) else f" (as {paths[real]})"
            raise InputError(f"{image} is given twice{same}: give each photo once")
        paths[real] = str(image)
        stem = _stem(image)
        key = stem.casefold()
        if key in stems:
            first, first_stem = stems[key]
            where = "" if first_stem == stem else " on a case-insensitive file system (macOS, Windows)"
            raise InputError(
                f"{first} and {image} would write the same files ({stem}_...){where}; rename one"
            )
        stems[key] = (str(image), stem)


def _write(image, path: Path, written: list[Path], on_write: Callable[[Path], None] | None) -> None:
    from safeio import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    written.append(path)
    if on_write is not None:
        on_write(path)


def _write_outcome(
    outcome, folder: Path, stem: str, targets: list[str], written: list[Path], on_write, source: bool = True
) -> None:
    if source:
        _write(outcome.source, folder / f"{stem}_source.png", written, on_write)
    for k, (image, prompt) in enumerate(zip(outcome.targets, targets, strict=False)):
        _write(image, folder / f"{stem}_edit{k}_{slug(prompt)}.png", written, on_write)
    for k, (_, heatmap) in enumerate(outcome.heatmaps):
        if k == 0 and not source:
            continue  # the source's heatmap was written with the source
        name = "source" if k == 0 else f"edit{k - 1}"
        _write(heatmap, folder / f"{stem}_heatmap_{name}.png", written, on_write)


def edit_photo_files(
    pipe,
    image,
    job: EditJob,
    output,
    *,
    cache: InversionCache | None = None,
    written: list[Path] | None = None,
    on_write: Callable[[Path], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> list[Path]:
    """Apply every prompt pair of ``job`` to one photo and write the results into ``output``.

    The file names depend only on the photo's name and the prompts (``STEM_source.png``,
    ``STEM_edit0_PROMPT.png``, ``STEM_NNN_...`` with several pairs). Files are appended to ``written`` as they
    are written, so a caller sees what was written before an error. Raises :class:`InputError` (a
    ``ValueError``) for a photo or prompt the engine refuses.
    """
    written = [] if written is None else written
    folder = Path(output)
    stem = _stem(image)
    sources_written: set[str] = set()  # one source image per (photo, source prompt)
    for n, (source, targets) in enumerate(job.pairs):
        tag = stem if len(job.pairs) == 1 else f"{stem}_{n:03d}"
        if say is not None:
            say(f"{image}: {source!r} -> {targets} ({job.method})")
        if job.method == "pnp":
            outcome = edit_photo_pnp(
                pipe,
                image,
                targets,
                source=source,
                feature_threshold=job.pnp_f_t,
                attention_threshold=job.pnp_attn_t,
                steps=job.steps,
                guidance=job.guidance,
                seed=job.seed,
                keep_aspect=job.keep_aspect,
                cache=cache,
                progress=job.progress,
            )
        else:
            outcome = edit_photo_p2p(
                pipe,
                image,
                source,
                targets,
                job.settings,
                inversion=job.inversion,
                steps=job.steps,
                guidance=job.guidance,
                seed=job.seed,
                heatmaps=job.heatmaps,
                keep_aspect=job.keep_aspect,
                cache=cache,
                progress=job.progress,
            )
        _write_outcome(outcome, folder, tag, targets, written, on_write, source=source not in sources_written)
        sources_written.add(source)
    return written


def _state(device: str | None):
    """accelerate's process state; on the CPU (asked for, or no CUDA) a multi-process launch uses gloo. The
    process group waits :data:`WAIT_LIMIT` for a collective (its default is 10 minutes with NCCL)."""
    import torch
    from accelerate import PartialState

    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    return PartialState(cpu=cpu, timeout=WAIT_LIMIT)


def share_of(items: Sequence, rank: int, processes: int) -> list:
    """The items process ``rank`` of ``processes`` works on: every ``processes``-th, starting at ``rank``."""
    return list(items[rank::processes])


def _process_device(state, device: str | None) -> str | None:
    if state.num_processes == 1:
        return device  # exactly what a plain run uses
    if device is None or device == "cuda":
        return str(state.device)  # this process's own device (cuda:LOCAL_RANK, or cpu)
    if device == "cpu":
        return "cpu"
    raise InputError(
        f"--device {device}: with {state.num_processes} processes each process uses its own device; "
        "leave --device out (or give 'cpu' or 'cuda')"
    )


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    import torch

    return (torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else ()


def edit_photos(
    images: Sequence,
    job: EditJob,
    *,
    model: str,
    output,
    device: str | None = None,
    summary_file=None,
    load: Callable[[str, str | None], object] | None = None,
    on_write: Callable[[Path], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Edit ``images`` with ``job``, split across the processes of a launch (or all here, in a plain process).

    Call it in every process. Each loads the pipeline once (``load(model, device)``, default
    :func:`editkit.load_pipeline`) on its own device and edits its share; the main process writes the summary
    to ``summary_file`` (default ``OUTPUT/summary.json``; ``False``: none) and prints the table through
    ``say``. Every process returns the same :class:`BatchSummary`. Problems with the whole run (bad prompts,
    a model that cannot be loaded) raise as usual; a problem with one photo is recorded in the summary.
    """
    from accelerate.utils import broadcast_object_list, gather_object

    job.check()
    check_photo_names(images)
    output = Path(output)
    state = _state(device)
    device = _process_device(state, device)
    rank, n_proc = state.process_index, state.num_processes
    prefix = f"[process {rank + 1}/{n_proc}] " if n_proc > 1 else ""

    def tell(message: str) -> None:
        if say is not None:
            say(prefix + message)

    seed = [job.seed if job.seed is not None else random.SystemRandom().randrange(2**31)]
    if n_proc > 1:
        seed = broadcast_object_list(seed)  # one run seed, drawn on the main process
    job = EditJob(
        **{
            **{f: getattr(job, f) for f in job.__dataclass_fields__},
            "seed": seed[0],
            "progress": job.progress and state.is_local_main_process,
        }
    )

    if load is None:
        from .models import load_pipeline as load

    indexed = list(enumerate(str(p) for p in images))
    share = share_of(indexed, rank, n_proc)
    where = f" on process {rank + 1} of {n_proc}" if n_proc > 1 else ""
    memory_errors = _out_of_memory_errors()
    pipe = None
    stopped: Exception | None = None  # what ended this process's work early (its other photos: not edited)
    reason = ""  # ... in the summary's words

    def load_here() -> None:
        nonlocal pipe, stopped, reason
        tell(f"{len(share)} of {len(indexed)} photo(s) here; loading {model} ...")
        try:
            pipe = load(model, device)
        except ModelNotFoundError as e:
            if state.is_main_process:
                raise
            stopped = e  # the main process found it: a problem of this process's machine
        except Exception as e:  # noqa: BLE001 - out of memory (or a bug): recorded, summary written, bug raised
            stopped = e
        if stopped is not None:
            reason = f"the model could not be loaded{where}: {_one_line(stopped)}"
            tell(f"{reason}; {len(share)} photo(s) not edited")
        elif hasattr(pipe, "unet"):
            tell(f"model on {pipe.device} in {str(pipe.unet.dtype).replace('torch.', '')}")

    # The main process loads first (a Hub download happens once); the broadcast is the others' signal to go.
    not_found = None
    if state.is_main_process and share:
        try:
            load_here()
        except ModelNotFoundError as e:
            not_found = e
    if n_proc > 1:
        [problem] = broadcast_object_list([None if not_found is None else not_found.problem])
        if problem is not None and not_found is None:
            not_found = ModelNotFoundError(problem)
    if not_found is not None:  # every process stops: the model is not where the user said
        raise not_found
    if not state.is_main_process and share:
        load_here()

    results: list[tuple[int, InputResult]] = []
    cache = InversionCache(capacity=4)
    for index, image in share:
        written: list[Path] = []
        result = InputResult(image=image, ok=stopped is None, process=rank)
        if stopped is not None:
            result.error = f"not edited: {reason}"
            results.append((index, result))
            continue
        try:
            if not Path(image).is_file():
                raise InputError(f"no such image file: {image}")
            edit_photo_files(
                pipe, image, job, output, cache=cache, written=written, on_write=on_write, say=tell
            )
        except (ValueError, *memory_errors) as e:  # InputError, the engine's input checks, out of memory
            result.ok = False
            result.error = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
            tell(f"{image}: failed: {result.error}")
        except Exception as e:  # noqa: BLE001 - a bug: recorded, the summary written, then raised again
            stopped, result.ok, result.error = e, False, _one_line(e)
            reason = f"stopped{where} by {_one_line(e)} on {image}"
            tell(f"{image}: failed: {result.error}")
        result.files = [p.name for p in written]
        results.append((index, result))
    if n_proc > 1:
        results = gather_object(results)
    inputs = [r for _, r in sorted(results, key=lambda pair: pair[0])]
    summary = BatchSummary(
        inputs=inputs, output=str(output), processes=n_proc, seed=job.seed, method=job.method
    )
    if summary_file is not False:
        path = Path(summary_file) if summary_file is not None else output / SUMMARY_NAME
        summary.summary_file = str(path)
        if state.is_main_process:
            from safeio import atomic_write_text

            atomic_write_text(path, json.dumps(summary.to_json(), indent=2) + "\n")
    if state.is_main_process and say is not None:
        say(summary.table())
    if n_proc > 1:
        # A launcher (torchrun's agent) stops every process as soon as one exits with a non-zero code: nobody
        # leaves before the main process has written the summary.
        state.wait_for_everyone()
    if stopped is not None and not isinstance(stopped, memory_errors):
        raise stopped  # a bug stays a bug (exit code 1 and its traceback), now that the summary is written
    return summary
