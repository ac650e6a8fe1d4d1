"""The ``editkit`` command: edit photos, or generate an image and edit it.

    editkit edit cat.jpg --source "a cat sitting on a table" --target "a dog sitting on a table"
    editkit edit cat.jpg --method pnp --target "a watercolor painting of a cat"
    editkit edit a.jpg b.jpg --pairs prompts.tsv --heatmaps --output out/
    editkit generate --source "a cat riding a bicycle" --target "a dog riding a bicycle"
    editkit edit cat.jpg --model stabilityai/stable-diffusion-3.5-medium --source "a cat" --target "a fox"
    editkit edit cat.jpg --model black-forest-labs/FLUX.1-dev --offload --method flowedit --source ... --target ...
    accelerate launch --multi_gpu --num_processes 4 -m editkit.cli edit *.jpg --pairs prompts.tsv --output out/

The editing UI is its own command, ``editkit-ui --model /models/sd15`` (``python -m apps.ui``): the library
never imports the app. ``editkit ui`` says so and exits with 2.

Every option is documented in ``editkit COMMAND --help``. The paths of the written images are printed on
stdout, one per line (messages go to stderr), so scripts can collect them.

Exit codes, for scripts:

    0  everything was written
    1  an unexpected internal error (a bug: please report it with the message)
    2  bad usage or input: unknown option, missing prompt or image, unreadable image, a word swap whose
       prompts differ in length, a word that is not in the prompt, a malformed pairs file, an unknown
       --device, an --output folder that cannot be written
    3  model not found: no weights at --model, an incomplete model folder or unreadable weights (the message
       says how to point at a model)
    4  batch edit (``--summary``, or started by accelerate launch / torchrun): at least one photo failed; the
       others were written, and the summary lists every photo with its files or its error (under a launcher
       every process exits 4; accelerate launch / torchrun then exit 1 and name the processes' exit code 4)
    130  interrupted (Ctrl-C)

Everything that does not need the model (prompts, words, pairs file, device, output folder, images, and
whether the model's family supports the --method: told from its model_index.json, tensor names or hub id) is
checked before the model is loaded.

Families and methods: Stable Diffusion 1.x/2.x and SDXL edit with p2p (default) and pnp; SD3 / SD3.5 and
FLUX.1 with flowedit (default) and rf-inversion (see docs/flow-models.md). generate with a flow model samples
the source prompt and edits that image into the targets with FlowEdit.

Batch form: ``--pairs FILE`` takes one edit per line instead of ``--source`` / ``--target``, either
tab-separated (``source<TAB>target[<TAB>target...]``, ``#`` starts a comment) or JSON lines
(``{"source": "...", "target": "..."}`` or ``"targets": [...]``); with several images, every pair is applied
to every image, and the inversion of an image is computed once per source prompt.

Many photos on several processes (``editkit.batch``): started by ``accelerate launch`` or ``torchrun``,
``edit`` splits the photos across the processes (each loads the model once on its own GPU, or the CPU); the
files and their names are the same as a single-process run's. In this batch mode (also ``--summary FILE`` in a
plain run) a bad photo does not stop the others: the main process writes a JSON summary (default
``OUTPUT/summary.json``) listing every photo with its files or its error, prints a short table on stderr, and
the exit code is 4 if any photo failed. Without a launcher and ``--summary``, a bad photo stops the run before
the model is loaded (exit code 2), as before.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from editkit.batch import slug  # noqa: F401 - part of this module's interface (file names)
from editkit.inversion import METHODS as INVERSION_METHODS

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_MODEL_NOT_FOUND = 3
EXIT_SOME_FAILED = 4
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


@dataclass(kw_only=True)
class ModelOptions:
    model: str = DEFAULT_MODEL
    """Stable Diffusion model: a Hugging Face hub id (cached, or with network), a local diffusers folder, or a
    single .safetensors/.ckpt checkpoint file."""
    device: str | None = None
    """Device to run on (cuda, cuda:1, cpu, mps). Default: CUDA when available, else CPU; on a GPU bf16 for
    FLUX.1 and fp16 for the others, fp32 on CPU."""
    offload: bool = False
    """diffusers' model CPU offload: each model goes to the GPU only while it runs (FLUX.1 on a 24 GB card)."""


@dataclass(kw_only=True)
class SamplingOptions(ModelOptions):
    steps: int | None = None
    """Number of denoising steps. Default: 50 DDIM steps for p2p / pnp (what they are defined with); FlowEdit's
    reference T (50 on SD3, 28 on FLUX); 28 for rf-inversion and flow generation."""
    guidance: float | None = None
    """Guidance scale. Default 7.5 (p2p / pnp); for flow models the pipeline's (SD3 7.0, FLUX 3.5) when
    generating. FlowEdit and rf-inversion take --source-guidance / --target-guidance instead."""
    seed: int = 0
    """Random seed of the initial noise (generate) or of the sampler (edit); -1 for a random seed."""
    output: Path = Path("editkit-out")
    """Folder the images are written to (created if missing)."""
    heatmaps: bool = False
    """Also write the per-token cross-attention heatmaps of every prompt (Prompt-to-Prompt only)."""
    quiet: bool = False
    """No progress bars and no messages on stderr (paths are still printed on stdout)."""


@dataclass(kw_only=True)
class P2POptions(SamplingOptions):
    source: str = ""
    """Source prompt: what the image shows (edit) or what to generate first (generate)."""
    target: tuple[str, ...] = ()
    """Target prompt(s): what the edited image should show; several give several edits of the same source."""
    pairs: Path | None = None
    """Batch: a file of prompt pairs instead of --source/--target, TSV (source<TAB>target[<TAB>target...]) or
    JSON lines ({"source": ..., "target": ...} or "targets": [...])."""
    edit: Literal["replace", "refine"] = "replace"
    """Prompt-to-Prompt edit: 'replace' swaps words (the prompts have the same number of words), 'refine' adds
    or changes words."""
    cross_replace: float = 0.8
    """Fraction of the steps in which the source's cross-attention maps are injected (0..1)."""
    self_replace: float = 0.4
    """Fraction of the steps in which the source's self-attention maps are injected (0..1)."""
    reweight: tuple[str, ...] = ()
    """Scale the attention of target-prompt words: WORD=SCALE ..., e.g. --reweight smiling=2 red=0.5."""
    blend_source: tuple[str, ...] = ()
    """Local blend: words of the source prompt whose region is edited; the rest of the image is kept."""
    blend_target: tuple[str, ...] = ()
    """Local blend: words of the target prompt(s) whose region is edited (default: the source words)."""
    n_max: int | None = None
    """FlowEdit (SD3 / FLUX): the edit runs the last n_max of --steps steps (the strength; reference default
    33 of 50 on SD3, 24 of 28 on FLUX)."""
    n_min: int | None = None
    """FlowEdit: the last n_min steps sample the target alone (default 0)."""
    n_avg: int | None = None
    """FlowEdit: velocity differences averaged over this many noise draws per step (default 1)."""
    source_guidance: float | None = None
    """FlowEdit / rf-inversion: guidance of the source prompt (FlowEdit 3.5 SD3, 1.5 FLUX; rf-inversion 0)."""
    target_guidance: float | None = None
    """FlowEdit / rf-inversion: guidance of the target prompt (FlowEdit 13.5 SD3, 5.5 FLUX; rf-inversion 3.5)."""
    gamma: float | None = None
    """rf-inversion: strength of the inversion's pull towards noise, 0..1 (default 0.5)."""
    eta: float | None = None
    """rf-inversion: strength of the sampling's pull towards the photo, 0..1, on the first quarter of the steps
    (default 1.0)."""


@dataclass(kw_only=True)
class Edit(P2POptions):
    """Edit real photos with Prompt-to-Prompt (after inversion) or Plug-and-Play."""

    images: tyro.conf.Positional[Annotated[tuple[Path, ...], tyro.conf.arg(metavar="IMAGE")]] = ()
    """The photos to edit (PNG, JPEG, ...); they are centre-cropped to a square and resized to the model's
    resolution (see --keep-aspect)."""
    method: Literal["p2p", "pnp", "flowedit", "rf-inversion"] | None = None
    """Editing method. SD 1.x/2.x, SDXL: 'p2p' (Prompt-to-Prompt on an inversion, the default) or 'pnp'
    (Plug-and-Play). SD3 / SD3.5, FLUX.1: 'flowedit' (inversion-free, the default) or 'rf-inversion'."""
    inversion: Literal[INVERSION_METHODS] = "null-text"
    """Inversion for p2p: 'null-text' (most faithful; 6-17x the time of DDIM on the tiny test model), 'negative-prompt' and
    'direct' (fast), 'ddim' (fast, drifts)."""
    pnp_f_t: float = 0.8
    """Plug-and-Play: fraction of the steps in which the source's ResNet features are injected (0..1)."""
    pnp_attn_t: float = 0.5
    """Plug-and-Play: fraction of the steps in which the source's self-attention is injected (0..1)."""
    keep_aspect: bool = False
    """Keep the photos' aspect ratio (longer side at the model's size) instead of centre-cropping a square."""
    summary: Path | None = None
    """Batch mode: write a JSON summary of every photo (its files or its error) to this file and go on past a
    bad photo (exit code 4 if any failed). On by default, as OUTPUT/summary.json, when started by accelerate
    launch or torchrun, which split the photos across processes."""


@dataclass(kw_only=True)
class Generate(P2POptions):
    """Generate an image from the source prompt and edit it into the target prompt(s) with Prompt-to-Prompt."""


Command = (
    Annotated[Edit, tyro.conf.subcommand("edit")]
    | Annotated[Generate, tyro.conf.subcommand("generate")]
)


# ---------------------------------------------------------------------------------------------------------
# Helpers

UI_POINTER = "editkit: the editing UI is its own command: editkit-ui --model PATH_OR_HUB_ID (see editkit-ui --help)"


def _say(opts, message: str) -> None:
    if not getattr(opts, "quiet", False):
        print(message, file=sys.stderr)


def read_pairs(path: Path) -> list[tuple[str, list[str]]]:
    """Read a prompt-pairs file (TSV or JSON lines); raises :class:`UsageError` naming the bad line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read the pairs file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise UsageError(f"the pairs file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    pairs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}, line {n}"
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{where}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise UsageError(f"{where}: expected a JSON object with 'source' and 'target' or 'targets'")
            targets = row.get("targets", row.get("target"))
            if isinstance(targets, str):
                targets = [targets]
            elif targets is None:
                targets = []
            elif not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                key = "targets" if "targets" in row else "target"
                raise UsageError(f"{where}: '{key}' must be a prompt or a list of prompts (strings), "
                                 f"got {json.dumps(targets)[:60]}")
            source = row.get("source", "")
            if not isinstance(source, str):
                raise UsageError(f"{where}: 'source' must be a prompt (a string), got {json.dumps(source)[:60]}")
        else:
            source, *targets = [c.strip() for c in line.split("\t")]
        if not source.strip() or not any(t.strip() for t in targets):
            raise UsageError(f"{where}: needs a source and at least one target prompt (TAB-separated or JSON)")
        pairs.append((source.strip(), [t.strip() for t in targets if t.strip()]))
    if not pairs:
        raise UsageError(f"{path} has no prompt pairs")
    return pairs


def _prompt_pairs(opts: P2POptions) -> list[tuple[str, list[str]]]:
    if opts.pairs is not None:
        if opts.source or opts.target:
            raise UsageError("give either --pairs or --source/--target, not both")
        return read_pairs(opts.pairs)
    if not opts.source.strip():
        raise UsageError("--source is required (or --pairs FILE)")
    if not opts.target:
        raise UsageError("--target is required (or --pairs FILE)")
    return [(opts.source, list(opts.target))]


def _p2p_settings(opts: P2POptions):
    from editkit.jobs import P2PSettings, parse_reweight

    return P2PSettings(
        kind=opts.edit,
        cross_replace=opts.cross_replace,
        self_replace=opts.self_replace,
        reweight=parse_reweight(opts.reweight),
        blend_source=list(opts.blend_source),
        blend_target=list(opts.blend_target),
    )


def _check_run(opts: SamplingOptions) -> None:
    """What every command can check before loading the model: sampling values, device, output folder."""
    from editkit.jobs import check_sampling
    from editkit.models import check_device

    check_sampling(opts.steps, opts.guidance)
    check_device(opts.device)
    _check_output(opts.output)


def _check_output(folder: Path) -> None:
    """Prove the output folder can take files, before any work is done, and leave nothing behind: a missing
    folder is created by the first file written (its nearest existing parent must be a writable folder)."""
    import errno
    import os
    import tempfile

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output {folder} exists and is not a folder")
    try:
        if folder.is_dir():
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".editkit-write-test-"):
                pass
            return
        parent = next(p for p in folder.absolute().parents if p.exists())
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"Permission denied ({parent})")
    except OSError as e:
        raise UsageError(f"--output {folder} cannot be written: {e.strerror or e}") from e


def _seed(seed: int):
    return None if seed < 0 else seed


@contextlib.contextmanager
def _loading_bars(show: bool):
    """diffusers' and transformers' loading progress bars, off with --quiet (restored afterwards)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    modules = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    if not show:
        for m in modules:
            m.disable_progress_bar()
    try:
        yield
    finally:
        if not show:
            for m in modules:
                m.enable_progress_bar()


def _load(opts: ModelOptions):
    from editkit import load_pipeline
    from editkit.models import FLOW_FAMILIES, family_name, family_of

    _say(opts, f"loading {opts.model} ...")
    with _loading_bars(not getattr(opts, "quiet", False)):
        pipe = load_pipeline(opts.model, device=opts.device, offload=opts.offload)
    family = family_of(pipe)
    denoiser = pipe.transformer if family in FLOW_FAMILIES else pipe.unet
    _say(opts, f"loaded a {family_name(family)} model ({type(pipe).__name__}) on "
               f"{pipe._execution_device} in {str(denoiser.dtype).replace('torch.', '')}")
    return pipe


def _family(opts) -> str | None:
    """The model's family told from its path / index / name, before loading (None: not known until loaded)."""
    from editkit.models import detect_family

    return detect_family(opts.model)


def _resolve_method(opts, family: str | None) -> str:
    """--method, or the family's default; refused here, before loading, when the family does not offer it."""
    from editkit.models import check_method, methods_for

    method = opts.method if getattr(opts, "method", None) is not None else (
        methods_for(family)[0] if family is not None else "p2p")
    check_method(family, method)
    return method


def _sd_defaults(opts) -> None:
    if opts.steps is None:
        opts.steps = 50
    if opts.guidance is None:
        opts.guidance = 7.5


def _flow_settings(opts, method: str):
    from editkit.flow.edit import FlowSettings, check_settings

    p2p_only = [name for name, value, default in (
        ("--heatmaps", opts.heatmaps, False), ("--reweight", opts.reweight, ()), ("--blend-source", opts.blend_source, ()),
        ("--blend-target", opts.blend_target, ())) if value != default]
    if p2p_only:
        raise UsageError(f"{', '.join(p2p_only)}: Prompt-to-Prompt options; not available with --method {method}")
    settings = FlowSettings(method=method, steps=opts.steps, n_max=opts.n_max, n_min=opts.n_min, n_avg=opts.n_avg,
                            source_guidance=opts.source_guidance, target_guidance=opts.target_guidance,
                            gamma=opts.gamma, eta=opts.eta)
    check_settings(settings)
    if opts.guidance is not None:
        from editkit.jobs import check_sampling

        check_sampling(opts.steps or 1, opts.guidance)
    if settings.steps is not None and settings.n_max is not None and settings.n_max > settings.steps:
        raise UsageError(f"--n-max {settings.n_max} is more than --steps {settings.steps}")
    return settings


def _flow_pairs(opts) -> list[tuple[str, list[str]]]:
    return _prompt_pairs(opts)  # FlowEdit and RF-Inversion need the source prompt as p2p does


def _write_image(image, path: Path, written: list[Path]) -> None:
    from safeio import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    written.append(path)
    _print_path(path)


def run_flow_edit(opts: Edit, method: str) -> list[Path]:
    """SD3 / FLUX: each photo, each prompt pair; files named as p2p's (STEM_source.png, STEM_edit0_PROMPT.png)."""
    from editkit import jobs
    from editkit.batch import check_photo_names
    from editkit.flow.edit import edit_photo

    settings = _flow_settings(opts, method)
    pairs = _flow_pairs(opts)
    check_photo_names(opts.images)
    for image_path in opts.images:
        jobs.open_photo(image_path).close()
    _check_output(opts.output)
    from editkit.models import check_device

    check_device(opts.device)
    pipe = _load(opts)
    written: list[Path] = []
    for image_path in opts.images:
        stem = slug(Path(image_path).stem)
        for n, (source, targets) in enumerate(pairs):
            tag = stem if len(pairs) == 1 else f"{stem}_{n:03d}"
            _say(opts, f"{image_path}: {source!r} -> {targets} ({method})")
            src, edits = edit_photo(pipe, image_path, source, targets, settings, seed=_seed(opts.seed),
                                    progress=not opts.quiet)
            _write_image(src, opts.output / f"{tag}_source.png", written)
            for k, (image, prompt) in enumerate(zip(edits, targets, strict=True)):
                _write_image(image, opts.output / f"{tag}_edit{k}_{slug(prompt)}.png", written)
    return written


def run_flow_generate(opts: Generate) -> list[Path]:
    from editkit.flow.edit import generate_and_edit

    settings = _flow_settings(opts, "flowedit")
    pairs = _flow_pairs(opts)
    _check_output(opts.output)
    pipe = _load(opts)
    written: list[Path] = []
    for n, (source, targets) in enumerate(pairs):
        _say(opts, f"[{n + 1}/{len(pairs)}] {source!r} -> {targets}")
        src, edits = generate_and_edit(pipe, source, targets, settings, seed=_seed(opts.seed),
                                       guidance=opts.guidance, progress=not opts.quiet)
        _write_image(src, opts.output / f"{n:03d}_source.png", written)
        for k, (image, prompt) in enumerate(zip(edits, targets, strict=True)):

            _write_image(image, opts.output / f"{n:03d}_edit{k}_{slug(prompt)}.png", written)
    return written


def _print_path(path: Path) -> None:
    # one write per line: the processes of a launch share stdout, and print() writes the text and the newline
    # separately, so two processes' paths could run together on one line
    sys.stdout.write(f"{path}\n")
    sys.stdout.flush()


def _write_outcome(outcome, folder: Path, stem: str, targets: list[str], written: list[Path], source: bool = True):
    from editkit.batch import _write_outcome as write_outcome

    write_outcome(outcome, folder, stem, targets, written, _print_path, source=source)


# ---------------------------------------------------------------------------------------------------------
# Commands


def run_generate(opts: Generate) -> list[Path]:
    import os

    from editkit import jobs

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would generate and write the same files
        raise UsageError("generate does not split its work across processes: run it without accelerate launch or "
                         "torchrun (edit does)")
    from editkit.models import FLOW_FAMILIES

    if _family(opts) in FLOW_FAMILIES:
        return run_flow_generate(opts)
    _sd_defaults(opts)
    pairs = _prompt_pairs(opts)
    settings = _p2p_settings(opts)
    for source, targets in pairs:  # every prompt and word check, before the model is loaded
        jobs.plan_p2p(settings, source, targets)
    _check_run(opts)
    pipe = _load(opts)
    written: list[Path] = []
    for n, (source, targets) in enumerate(pairs):
        _say(opts, f"[{n + 1}/{len(pairs)}] {source!r} -> {targets}")
        outcome = jobs.generate(pipe, source, targets, settings, steps=opts.steps, guidance=opts.guidance,
                                seed=_seed(opts.seed), heatmaps=opts.heatmaps, progress=not opts.quiet)
        _write_outcome(outcome, opts.output, f"{n:03d}", targets, written)
    return written


def _edit_job(opts: Edit):
    """Check everything about the prompts and settings (no model needed) and return the job for every photo."""
    from editkit import jobs
    from editkit.batch import EditJob

    if opts.method == "pnp":
        if opts.pairs is None and not opts.target:
            raise UsageError("--target is required (or --pairs FILE)")
        pairs = read_pairs(opts.pairs) if opts.pairs is not None else [(opts.source, list(opts.target))]
        for name, value in (("--pnp-f-t", opts.pnp_f_t), ("--pnp-attn-t", opts.pnp_attn_t)):
            if not 0.0 <= value <= 1.0:  # NaN fails this too
                raise UsageError(f"{name} must be between 0 and 1, got {value}")
        if opts.heatmaps:
            _say(opts, "note: --heatmaps applies to p2p only; Plug-and-Play stores no cross-attention maps")
        settings = jobs.P2PSettings()
    else:
        pairs = _prompt_pairs(opts)
        settings = _p2p_settings(opts)
        for source, targets in pairs:
            jobs.plan_p2p(settings, source, targets)
    return EditJob(pairs=pairs, method=opts.method, settings=settings, inversion=opts.inversion, steps=opts.steps,
                   guidance=opts.guidance, seed=_seed(opts.seed), heatmaps=opts.heatmaps,
                   keep_aspect=opts.keep_aspect, pnp_f_t=opts.pnp_f_t, pnp_attn_t=opts.pnp_attn_t,
                   progress=not opts.quiet)


def batch_mode(opts: Edit) -> bool:
    """``--summary`` given, or started by accelerate launch / torchrun (see the module docstring)."""
    from editkit.batch import launched

    return opts.summary is not None or launched()


def run_edit(opts: Edit) -> list[Path]:
    from editkit import jobs
    from editkit.batch import check_photo_names, edit_photo_files

    if not opts.images:
        raise UsageError("give at least one image to edit: editkit edit IMAGE [IMAGE ...] --source ... --target ...")
    missing = [str(p) for p in opts.images if not Path(p).is_file()]
    if missing:
        raise UsageError(f"no such image file: {', '.join(missing)}")
    from editkit.models import FLOW_FAMILIES

    method = _resolve_method(opts, _family(opts))
    if method in ("flowedit", "rf-inversion") or _family(opts) in FLOW_FAMILIES:
        return run_flow_edit(opts, method)
    opts.method = method
    _sd_defaults(opts)
    job = _edit_job(opts)
    check_photo_names(opts.images)
    for image_path in opts.images:  # readable and within the pixel limit, before the model is loaded
        jobs.open_photo(image_path).close()
    _check_run(opts)
    pipe = _load(opts)
    cache = jobs.InversionCache(capacity=4)
    written: list[Path] = []
    for image_path in opts.images:
        edit_photo_files(pipe, image_path, job, opts.output, cache=cache, written=written, on_write=_print_path,
                         say=lambda message: _say(opts, message))
    return written


def run_batch_edit(opts: Edit):
    """Batch mode: the photos split across the launch's processes, a summary, bad photos recorded (exit 4)."""
    from editkit.batch import edit_photos

    if not opts.images:
        raise UsageError("give at least one image to edit: editkit edit IMAGE [IMAGE ...] --source ... --target ...")
    method = _resolve_method(opts, _family(opts))
    if method not in ("p2p", "pnp"):
        raise UsageError(f"batch mode (--summary, accelerate launch, torchrun) runs p2p and pnp; --method {method} "
                         "runs without it")
    opts.method = method
    _sd_defaults(opts)
    job = _edit_job(opts)
    _check_run(opts)
    if opts.summary is not None:
        _check_output(Path(opts.summary).parent)

    def load(model, device):  # editkit.batch says "loading ..." with the process's number
        from editkit import load_pipeline

        with _loading_bars(not opts.quiet):
            return load_pipeline(model, device=device, offload=opts.offload)

    return edit_photos(opts.images, job, model=opts.model, output=opts.output, device=opts.device,
                       summary_file=opts.summary, load=load, on_write=_print_path,
                       say=lambda message: _say(opts, message))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``editkit`` console script; returns the exit code (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["ui"]:
        print(UI_POINTER, file=sys.stderr)
        return EXIT_USAGE
    description = __doc__.replace("``", "`")
    try:
        opts = tyro.cli(Command, args=args, prog="editkit", description=description,
                        config=(tyro.conf.OmitSubcommandPrefixes,))
    except SystemExit as e:  # --help (0) or a parse error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    from editkit.models import ModelNotFoundError
    from safeio import WriteError

    try:
        if isinstance(opts, Edit) and batch_mode(opts):
            summary = run_batch_edit(opts)
            return summary.exit_code  # the table on stderr says what was written
        written = run_edit(opts) if isinstance(opts, Edit) else run_generate(opts)
    except ModelNotFoundError as e:
        print(f"editkit: model not found: {e.for_cli()}", file=sys.stderr)
        return EXIT_MODEL_NOT_FOUND
    except WriteError as e:  # disk full, permission lost mid-run: one line naming the file
        print(f"editkit: error: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:  # UsageError, editkit.jobs.InputError and the engine's input checks
        print(f"editkit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("editkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - one line for scripts, the traceback for the bug report
        import traceback

        traceback.print_exc()
        print(f"editkit: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INTERNAL
    _say(opts, f"wrote {len(written)} file(s) to {opts.output}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
