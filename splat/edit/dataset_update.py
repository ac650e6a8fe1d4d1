"""Text-driven editing of a trained scene (``splat edit``): editkit's per-photo edits carried into 3D.

The recipe is Instruct-NeRF2NeRF's *Iterative Dataset Update* (Haque et al., ICCV 2023): training goes on
from the trained Gaussians while, every ``edit_every`` steps, one training view's image is replaced by an
edit of the current render of that view. Each edit sees what the 3D model already agrees on, so the
per-view edits converge to one scene that is consistent from every view. The per-view edit is editkit's:

* **Prompt-to-Prompt** (``method="p2p"``, default): the view's photo is inverted once with the source
  prompt (Direct Inversion by default: the source row then reconstructs the photo exactly) and cached on
  disk; the edit runs the last ``strength`` of the DDIM steps. Its source row starts on the photo's
  inversion, its target row on the *render* noised with the photo's inverted noise
  (:func:`editkit.inversion.start_latents`), and the target takes the source's attention (replace /
  refine / re-weight, with a local blend when ``blend_words`` are given).
* **Plug-and-Play** (``method="pnp"``): the same start, with the photo's DDIM inversion supplying the
  injected features and self-attention.

How the render enters (IN2N's conditioning, in our terms). IN2N's InstructPix2Pix is conditioned on the
original photo and denoises the noised render from a random level ``t in [0.02, 0.98]``. Here the photo
enters through the source row's attention (and its inverted noise), the render through the target row's
start; ``strength`` is the noise level (the fraction of the DDIM steps run, as diffusers' img2img counts
it), fixed, or annealed linearly from ``strength`` to ``strength_end`` over the run: strong edits early,
gentle refinements once the scene has taken the edit. The same noise serves every edit of a view (the
photo's inversion), which IN2N's follow-ups found steadies the views, and every step is deterministic,
so a run is reproducible for a fixed seed (the seed fixes the training's view order and the order in
which views are edited).

Two deliberate choices, both documented in docs/scene-editing.md:

* **Pixel residual** (``residual=True``): the new training image is
  ``render + decode(target) - decode(encode(render))`` at the training resolution, not ``decode(target)``:
  what the diffusion changed, applied to the render. The VAE's round-trip error (fine texture the
  autoencoder loses; nearly everything with the tiny test model) cancels, and IDU's fixed point is
  explicit: a scene whose renders the edit leaves unchanged is trained on its own renders. An identity
  edit (target = source) of a model whose noise prediction does not depend on the start changes nothing.
* **Local blend in pixel space**: with ``blend_words``, Prompt-to-Prompt's latent mask is scaled to the
  training image, and outside it the training pixels *are* the photo's (bit for bit); the latent-space
  blend alone leaves VAE round-trip differences everywhere.

Densification is off while editing by default (the Gaussians are moved and recoloured, not re-grown);
``densify="prune"`` / ``"full"`` turns gsplat's pruning (and cloning / splitting) on through the Trainer's
``continue_training``; opacity resets stay off. The noise level may also be drawn per edit uniformly in
``[lower_bound, upper_bound]`` (IN2N's random timestep). When the LPIPS weights are on disk, the loss gains
IN2N's LPIPS term (AlexNet, weight ``lpips_weight`` = 1.0, on 32 px patches: :mod:`splat.edit.lpips_term`);
without them a note says so once and ``edit.json`` records the term as off. After the edit, :mod:`splat.edit.consistency`
measures how well the edited training images agree in 3D (``consistency`` in ``edit.json``). Outputs (``out``): the edited checkpoint and PLY, ``renders/step_N`` of the held-out views before
and after against the original photos, ``before_after/`` (before left, after right, and a contact sheet),
``edited_images/`` (every training image as the last edit left it, and the blend masks), ``edit.json``.
Every checkpoint of an edit also holds the edit's state (its training images as they were at that step, the
settings, the number of edits made), so ``resume`` goes on from any of them and ends as the uninterrupted
edit would.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splat.edit.config import EditConfig, SceneEditError, check_method_family, plan_edit
from splat.edit.view_editor import ViewEditor


@dataclass
class EditResult:
    out: Path
    checkpoint: Path
    ply: Path
    steps: int  # training steps of the edit
    views_edited: int  # view edits made (a view may be edited several times)
    inversions_computed: int
    inversions_loaded: int  # from the on-disk cache
    seconds_per_edit: float  # mean time of one view edit (render, diffusion, compositing; no first-time inversion)
    elapsed_s: float
    strengths: list = field(default_factory=list)  # the noise level of each edit, in order
    num_gaussians: tuple = (0, 0)  # before and after the edit
    lpips_term: bool = False  # whether the loss had the LPIPS term (its weights on disk and --lpips-weight > 0)
    lpips_term_off: str | None = None  # why not, when it was off
    consistency: dict = field(default_factory=dict)  # splat.edit.consistency.multiview_consistency
    before: dict = field(default_factory=dict)  # held-out metrics against the original photos
    after: dict = field(default_factory=dict)
    contact_sheet: Path | None = None


# ---------------------------------------------------------------------------------------------------------
# the whole scene


EDIT_STATE_FORMAT = "splat-edit-state-1"
_NOT_COMPARED = ("progress", "device", "cache_dir")  # settings a resumed edit may change


def _settings(cfg: EditConfig) -> dict:
    """The settings that decide an edit's result, as plain data (what a resume must match)."""
    d = dataclasses.asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k not in _NOT_COMPARED}


def _read_edit_state(resume: str | Path, cfg: EditConfig, start: int) -> tuple[dict, Path]:
    """The edit state in a checkpoint written by :func:`edit_scene`, checked against ``cfg``."""
    import torch
    from torch import Tensor

    from splat.gaussians.checkpoint import CheckpointError, read_checkpoint
    from splat.gaussians.model import find_model_file

    file = find_model_file(resume)
    ckpt = read_checkpoint(file)
    state = (ckpt.get("extras") or {}).get("edit")
    if not isinstance(state, dict) or state.get("format") != EDIT_STATE_FORMAT:
        raise CheckpointError(f"{file} is not a checkpoint of `splat edit`: nothing to resume")
    if state.get("start_step") != start:
        raise CheckpointError(
            f"{file} continues a run from step {state.get('start_step')}, not the given RUN (at step {start})"
        )
    now = _settings(cfg)
    for key, saved in state.get("settings", {}).items():
        if now.get(key) != saved:
            raise SceneEditError(
                f"--resume {file}: the edit was made with {key}={saved!r}, this command has {now.get(key)!r}; "
                "resume with the same settings"
            )
    images = state.get("images")
    if not isinstance(images, dict) or not all(isinstance(t, Tensor) and t.dtype == torch.uint8 for t in images.values()):
        raise CheckpointError(f"{file}: the edit's training images are missing or damaged")
    return {**state, "step": int(ckpt["step"]), "metrics": json.loads(ckpt.get("metrics") or "{}")}, file


def _strength_at(cfg: EditConfig, k: int, total: int) -> float:
    """The noise level of edit ``k`` (0-based) of ``total``: fixed, annealed, or drawn uniformly in
    [lower_bound, upper_bound] from a generator seeded with (seed, k) (a resumed edit draws the same), then
    rounded to whole DDIM steps, at least one."""
    if cfg.lower_bound is not None:
        u = float(np.random.default_rng([cfg.seed, k]).uniform(cfg.lower_bound, cfg.upper_bound))
        run = min(cfg.steps, max(1, int(cfg.steps * u)))  # steps run, as editkit.sampling.start_step counts
        return min(1.0, (run + 0.5) / cfg.steps)
    if cfg.strength_end is None or total <= 1:
        return float(cfg.strength)
    return float(cfg.strength + (cfg.strength_end - cfg.strength) * k / (total - 1))


def _check_out(out: Path) -> None:
    from splat.outputs import OutputError, would_be_writable

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"output folder {out} already exists and is not empty: choose another --out (nothing is overwritten)")
    if not would_be_writable(out):
        raise OutputError(f"output folder {out} cannot be written (permission denied)")


def edit_scene(
    run: str | Path,
    scene: str | Path,
    cfg: EditConfig,
    out: str | Path,
    *,
    pipe=None,
    on_start=None,
    on_view_edited=None,
    resume: str | Path | None = None,
) -> EditResult:
    """Edit the trained scene ``run`` (a ``splat train`` output folder, checkpoint or PLY) of ``scene``
    into ``cfg.target`` with Iterative Dataset Update; writes the edited run to ``out``.

    ``pipe``: an editkit pipeline already loaded (default: ``cfg.model`` is loaded, in half precision on
    CUDA). Every input is checked before the model is loaded and before anything is written.
    ``on_start(trainer)`` is called once before the first step (e.g. to add a viewer's step callback),
    ``on_view_edited(name, image)`` after each view edit with the view's image name and its new training
    image (uint8 ``[H, W, 3]``).
    ``resume``: a checkpoint an interrupted edit wrote in ``out`` (or ``out`` itself: its newest); the edit
    goes on from there with the same settings (checked) and ends as the uninterrupted edit would. Every
    checkpoint of an edit holds its training images as they were at that step, so any of them resumes
    exactly.

    Raises:
        SceneEditError / ConfigError: prompts, words or settings that cannot run.
        CheckpointError, SceneError: no model in ``run``, or a scene that is not the run's.
        OutputError: ``out`` exists with files in it, or cannot be written.
        editkit.models.ModelNotFoundError: no diffusion weights at ``cfg.model``.
    """
    import torch
    from tqdm.auto import tqdm

    from safeio import atomic_write_bytes, atomic_write_text
    from splat.device import resolve_device
    from splat.edit.lpips_term import load_lpips_term
    from splat.gaussians.model import load_model
    from splat.outputs import atomic_save_image, check_output_dir, image_stem, save_comparisons
    from splat.training.trainer import Trainer

    t_start = time.perf_counter()
    run, scene, out = Path(run), Path(scene), Path(out)
    # 1. Inputs: settings and prompts, the run's model, the scene, the output folder (nothing written)
    group = plan_edit(cfg)
    if pipe is None:  # a method the model's family does not offer is refused before anything is loaded
        from editkit.models import detect_family

        check_method_family(cfg.method, detect_family(cfg.model), cfg.model)
    else:
        from editkit.models import UnsupportedModelError, family_of

        try:
            family = family_of(pipe)
        except UnsupportedModelError:
            family = None  # not a pipeline editkit knows: its own errors say so where it is used
        check_method_family(cfg.method, family, "the given pipeline")
    model = load_model(run)
    file, start = model.source, model.step
    resumed, resume_file = None, None
    if resume is None:
        _check_out(out)
    else:
        resumed, resume_file = _read_edit_state(resume, cfg, start)
    device = resolve_device(cfg.device)

    # 2. The trainer, continuing from the run's Gaussians (and Adam moments): no densification, no opacity reset
    trainer = Trainer.from_model(scene, model, dataclasses.replace(
        model.config, out=out, device=str(device), resume=None, progress=False, save_renders=False))  # fmt: skip
    del model  # the trainer holds the Gaussians now: no second copy (and its Adam moments) for the whole edit
    n_train = len(trainer.train_set)
    n_before = len(trainer.params["means"])
    iterations = cfg.iterations or cfg.edit_every * n_train * 2
    end = start + iterations
    photos = {i: trainer.train_set.image_u8(i).clone() for i in range(n_train)}  # the original photos
    # resumed: the edit's own checkpoint, Gaussians, Adam, RNG and metrics (restored by train())
    refine = {"refine_start": start, "refine_every": cfg.refine_every, "refine_stop": end + 1,
              "mcmc_refine_stop": end + 1} if cfg.densify != "off" else {"refine_stop": 0, "mcmc_refine_stop": 0}
    if cfg.densify == "prune":  # no gradient reaches this: nothing is cloned or split, only pruned
        refine["grow_grad2d"] = 1e9
    trainer.continue_training(
        "edit", steps=end, eval_steps=(start, end), save_steps=(end,), reset_every=0, seed=cfg.seed,
        save_renders=True, resume=resume_file, **refine,
    )  # fmt: skip
    # the LPIPS term (Instruct-NeRF2NeRF's) when its weights are on disk; a resume must have it as the edit had
    f0 = trainer.train_set[0]
    lpips_term, lpips_off = load_lpips_term(cfg.lpips_weight, cfg.lpips_patch, (f0.width, f0.height), device)
    if lpips_term is not None:
        trainer.view_loss_terms.append(lpips_term)
    if resumed is not None:
        if resumed.get("lpips_term", False) != (lpips_term is not None):
            was = "with" if resumed.get("lpips_term", False) else "without"
            now = "on" if lpips_term is not None else f"off ({lpips_off})"
            raise SceneEditError(f"--resume {resume_file}: the edit was made {was} the LPIPS term, here it is {now}; "
                                 "resume where the LPIPS weights are as they were")  # fmt: skip
        for i, image in resumed["images"].items():
            trainer.set_train_image(int(i), image)

    # 3. The diffusion model, on the trainer's device (half precision on CUDA)
    if pipe is None:
        from editkit.models import load_pipeline

        pipe = load_pipeline(cfg.model, device=device)

    editor = ViewEditor(pipe, cfg, group, cfg.cache_dir)
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(n_train, generator=g).tolist()  # the order in which views are edited
    total_edits = -(-iterations // cfg.edit_every)
    edited_dir = out / "edited_images"
    edit_seconds: list[float] = []

    # 4. Before: the held-out views against the original photos
    check_output_dir(out)
    if resumed is None:
        before = trainer.evaluate(start)
        state = {"format": EDIT_STATE_FORMAT, "start_step": start, "settings": _settings(cfg), "edits": 0,
                 "images": {}, "strengths": [], "lpips_term": lpips_term is not None}  # fmt: skip
        done = 0
    else:
        before = resumed["metrics"].get(str(start), {})
        state = {k: v for k, v in resumed.items() if k not in ("metrics", "step")}  # as saved
        state.setdefault("strengths", [])
        done = resumed["step"] - start
        for i, image in state["images"].items():  # the files as the checkpoint has them
            atomic_save_image(edited_dir / f"{image_stem(trainer.train_set.views[int(i)].name)}.png", image.float() / 255.0)
    trainer.checkpoint_extras["edit"] = state  # every checkpoint holds the edit's state: it resumes exactly

    if on_start is not None:
        on_start(trainer)
    bar = tqdm(total=iterations, initial=done, desc="edit", disable=not cfg.progress, dynamic_ncols=True)

    def on_step(tr, step, loss, psnr):
        k = step - start - 1
        if k % cfg.edit_every == 0:  # Iterative Dataset Update: one view per edit_every steps
            v = order[state["edits"] % n_train]
            f = tr.train_set[v]
            t0, inverted = time.perf_counter(), editor.inversion_seconds
            with torch.no_grad():
                render, _, _ = tr.render(f.K.to(tr.device), f.viewmat.to(tr.device), f.width, f.height,
                                         tr.active_sh_degree(step))
            strength = _strength_at(cfg, state["edits"], total_edits)
            image, mask = editor.edit(photos[v], render.cpu(), strength)
            # the view edit's time: render, diffusion, compositing; a first-time inversion is not an edit's cost
            edit_seconds.append(time.perf_counter() - t0 - (editor.inversion_seconds - inverted))
            state["strengths"].append(strength)
            tr.set_train_image(v, image)
            state["images"][str(v)] = image
            stem = image_stem(f.name)
            atomic_save_image(edited_dir / f"{stem}.png", image.float() / 255.0)
            if mask is not None:
                atomic_save_image(edited_dir / f"{stem}_mask.png", mask.float()[..., None].expand(-1, -1, 3))
            state["edits"] += 1
            if on_view_edited is not None:
                on_view_edited(f.name, image.numpy())
        bar.update(1)
        if step % 10 == 0 or step == end:
            bar.set_postfix(views_edited=state["edits"], loss=f"{float(loss):.4f}")

    trainer.step_callbacks.append(on_step)
    try:
        result = trainer.train()
    finally:
        bar.close()

    # 5. Before / after, side by side
    renders = out / "renders"
    pairs = out / "before_after"
    for i in range(len(trainer.test_set)):
        stem = image_stem(trainer.test_set.views[i].name)
        for tag, step in (("before", start), ("after", end)):
            src = renders / f"step_{step:06d}" / f"{stem}_render.png"
            if src.is_file():
                atomic_write_bytes(pairs / f"{stem}_{tag}.png", src.read_bytes())
    sheet = save_comparisons(pairs, left="before", right="after", caption="left: before the edit, right: after") \
        if pairs.is_dir() else None
    after = trainer.metrics.get(str(end), {})
    # 6. Multi-view consistency of the edited training images (the edited scene's depth carries each into
    # its neighbours), and of the same views' photos as the reference: one depth render per view serves both
    from splat.edit.consistency import multiview_consistency, view_geometry

    edited = {int(i): image for i, image in state["images"].items()}
    geometry = view_geometry(trainer, edited)
    consistency = multiview_consistency(trainer, edited, geometry=geometry)
    consistency["photos_psnr"] = multiview_consistency(trainer, {i: photos[i] for i in edited}, geometry=geometry)["psnr"]
    summary = EditResult(
        out=out,
        checkpoint=result.checkpoint,
        ply=result.ply,
        steps=iterations,
        views_edited=state["edits"],
        inversions_computed=editor.computed,
        inversions_loaded=editor.loaded,
        seconds_per_edit=float(np.mean(edit_seconds)) if edit_seconds else 0.0,
        strengths=[float(x) for x in state["strengths"]],
        num_gaussians=(n_before, len(trainer.params["means"])),
        lpips_term=lpips_term is not None,
        lpips_term_off=None if lpips_term is not None else lpips_off,
        consistency=consistency,
        elapsed_s=time.perf_counter() - t_start,
        before=before,
        after=after,
        contact_sheet=sheet,
    )
    record = {
        "run": str(run), "scene": str(scene), "model_file": str(file), "start_step": start,
        "resumed_from": str(resume_file) if resume_file is not None else None,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(summary).items()},
    }  # fmt: skip
    atomic_write_text(out / "edit.json", json.dumps(record, indent=2))
    return summary
