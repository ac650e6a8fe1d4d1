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

Two deliberate choices, both documented in the README:

* **Pixel residual** (``residual=True``): the new training image is
  ``render + decode(target) - decode(encode(render))`` at the training resolution, not ``decode(target)``:
  what the diffusion changed, applied to the render. The VAE's round-trip error (fine texture the
  autoencoder loses; nearly everything with the tiny test model) cancels, and IDU's fixed point is
  explicit: a scene whose renders the edit leaves unchanged is trained on its own renders. An identity
  edit (target = source) of a model whose noise prediction does not depend on the start changes nothing.
* **Local blend in pixel space**: with ``blend_words``, Prompt-to-Prompt's latent mask is scaled to the
  training image, and outside it the training pixels *are* the photo's (bit for bit); the latent-space
  blend alone leaves VAE round-trip differences everywhere.

Densification is off while editing (the Gaussians are moved and recoloured, not re-grown), opacity resets
too. Outputs (``out``): the edited checkpoint and PLY, ``renders/step_N`` of the held-out views before
and after against the original photos, ``before_after/`` (before left, after right, and a contact sheet),
``edited_images/`` (every training image as the last edit left it, and the blend masks), ``edit.json``.
Every checkpoint of an edit also holds the edit's state (its training images as they were at that step, the
settings, the number of edits made), so ``resume`` goes on from any of them and ends as the uninterrupted
edit would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from splat.config import ConfigError

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor

# torch, numpy and PIL are imported where they are used: `splat.cli` imports this module for EditConfig,
# and `splat --help` / `splat prepare` should not pay for torch.

__all__ = ["EditConfig", "EditResult", "SceneEditError", "ViewEditor", "default_cache_dir", "edit_scene"]

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
INVERSIONS = ("direct", "null-text", "negative-prompt", "ddim")


class SceneEditError(ConfigError):
    """The edit cannot run as asked (prompts, words, settings, run folder); the message says why."""


def default_cache_dir() -> Path:
    """Where inversions are cached: ``$EDITKIT_CACHE``, else ``$XDG_CACHE_HOME/editkit``, else
    ``~/.cache/editkit``; inversions go to its ``inversions/`` folder."""
    root = os.environ.get("EDITKIT_CACHE")
    if root:
        return Path(root) / "inversions"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "editkit" / "inversions"


@dataclass
class EditConfig:
    """What ``splat edit`` does to a trained scene (every field is a ``splat edit`` flag)."""

    source: str
    """What the photos show now ("a photo of a cup on a table")."""
    target: str
    """What they should show ("a photo of a golden cup on a table")."""
    method: Literal["p2p", "pnp"] = "p2p"
    """Per-view edit: Prompt-to-Prompt (attention control, local blend) or Plug-and-Play (feature injection)."""
    edit: Literal["replace", "refine", "reweight"] = "replace"
    """Prompt-to-Prompt edit: replace (word swap: as many words in both prompts), refine (words added or
    changed), reweight (scale the attention of --reweight words)."""
    reweight: tuple[str, ...] = ()
    """Re-weighted words of the target prompt, as WORD=SCALE (e.g. golden=2)."""
    blend_words: tuple[str, ...] = ()
    """Local blend: words of the source prompt naming what may change; the rest of every training image
    stays the original photo, pixel for pixel."""
    blend_target_words: tuple[str, ...] = ()
    """Local blend: the matching words of the target prompt (default: the same words as --blend-words)."""
    blend_threshold: float = 0.3
    """Local blend: a pixel is edited where the words' attention exceeds this fraction of its maximum."""
    cross_replace: float = 0.8
    """Prompt-to-Prompt: fraction of the steps with the source's cross-attention."""
    self_replace: float = 0.4
    """Prompt-to-Prompt: fraction of the steps with the source's self-attention."""
    model: str = DEFAULT_MODEL
    """Stable Diffusion 1.x/2.x/SDXL weights: hub id, diffusers folder or single .safetensors file."""
    steps: int = 50
    """DDIM steps of the inversion and of each edit (the edit runs the last strength x steps of them)."""
    guidance: float = 7.5
    """Classifier-free guidance of the edits."""
    inversion: Literal["direct", "null-text", "negative-prompt", "ddim"] = "direct"
    """Inversion of the photos (Prompt-to-Prompt; Plug-and-Play always uses DDIM inversion)."""
    strength: float = 0.75
    """Noise level of each edit: the fraction of the DDIM steps run from the noised render (0-1]."""
    strength_end: float | None = None
    """Anneal the strength linearly to this value over the run (default: fixed strength)."""
    edit_every: int = 10
    """Training steps between two view edits (Instruct-NeRF2NeRF: 10)."""
    iterations: int | None = None
    """Training steps of the edit (default: every training view edited twice)."""
    edit_size: int | None = None
    """Longer side of the images the diffusion model edits (default: the model's own size, 512 for SD 1.5)."""
    residual: bool = True
    """New training image = render + decode(target) - decode(encode(render)): what the edit changed, applied
    to the render (the VAE's round-trip loss cancels); else decode(target), as Instruct-NeRF2NeRF."""
    seed: int = 0
    """Seed of the training and of the order in which views are edited."""
    device: str = "auto"
    """Torch device of the Gaussians and the diffusion model ("auto": cuda if available, else cpu)."""
    cache_dir: Path | None = None
    """Folder of cached inversions (default: $EDITKIT_CACHE/inversions or ~/.cache/editkit/inversions)."""
    progress: bool = True
    """Show one progress bar for the whole edit."""


@dataclass
class EditResult:
    out: Path
    checkpoint: Path
    ply: Path
    steps: int  # training steps of the edit
    views_edited: int  # view edits made (a view may be edited several times)
    inversions_computed: int
    inversions_loaded: int  # from the on-disk cache
    seconds_per_edit: float  # mean time of one view edit (render, diffusion, compositing)
    elapsed_s: float
    before: dict = field(default_factory=dict)  # held-out metrics against the original photos
    after: dict = field(default_factory=dict)
    contact_sheet: Path | None = None


# ---------------------------------------------------------------------------------------------------------
# checking what the user asked for (no model, nothing written)


def plan_edit(cfg: EditConfig):
    """Check prompts, words and numbers; returns the Prompt-to-Prompt :class:`editkit.jobs.EditGroup`
    (``None`` for Plug-and-Play). Raises :class:`SceneEditError` with the reason."""
    from editkit.jobs import InputError, P2PSettings, check_sampling, parse_reweight, plan_p2p
    from editkit.sampling import start_step

    try:
        steps, guidance = check_sampling(cfg.steps, cfg.guidance)
        if steps != cfg.steps:
            raise InputError(f"steps must be a whole number, got {cfg.steps!r}")
        for name in ("strength", "strength_end"):
            value = getattr(cfg, name)
            if value is not None:
                try:
                    start_step(steps, value)
                except ValueError as e:
                    raise InputError(f"{name}: {e}") from None
        for name in ("edit_every", "iterations"):
            value = getattr(cfg, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
        if cfg.edit_size is not None and (not isinstance(cfg.edit_size, int) or cfg.edit_size < 8):
            raise InputError(f"edit_size must be a whole number of pixels >= 8, got {cfg.edit_size!r}")
        if cfg.inversion not in INVERSIONS:
            raise InputError(f"inversion must be one of {', '.join(INVERSIONS)}, got {cfg.inversion!r}")
        source, target = (cfg.source or "").strip(), (cfg.target or "").strip()
        if cfg.method == "pnp":
            if cfg.blend_words or cfg.blend_target_words or cfg.reweight or cfg.edit == "reweight":
                raise InputError(
                    "local blend and re-weighting are Prompt-to-Prompt edits: use --method p2p, or drop "
                    "--blend-words / --reweight"
                )
            if not target:
                raise InputError("Enter a target prompt (what the edited scene should show).")
            return None
        if cfg.method != "p2p":
            raise InputError(f"method must be 'p2p' or 'pnp', got {cfg.method!r}")
        weights = parse_reweight(list(cfg.reweight))
        if cfg.edit == "reweight" and not weights:
            raise InputError("--edit reweight needs words to re-weight: --reweight WORD=SCALE (e.g. golden=2)")
        kind = cfg.edit
        if kind == "reweight":  # on top of a word swap when the prompts line up, else a refinement
            kind = "replace" if len(source.split()) == len(target.split()) else "refine"
        settings = P2PSettings(
            kind=kind,
            cross_replace=cfg.cross_replace,
            self_replace=cfg.self_replace,
            reweight=weights,
            blend_source=list(cfg.blend_words),
            blend_target=list(cfg.blend_target_words or cfg.blend_words),
        )
        if cfg.blend_target_words and not cfg.blend_words:
            raise InputError("--blend-target-words needs --blend-words (the words of the source prompt)")
        (group,) = plan_p2p(settings, source, [target])
        if group.local_blend is not None:
            th = float(cfg.blend_threshold)
            if not 0.0 <= th < 1.0:
                raise InputError(f"blend_threshold must be in [0, 1), got {cfg.blend_threshold!r}")
            group.local_blend = dataclasses.replace(group.local_blend, threshold=(th, th))
        return group
    except InputError as e:
        raise SceneEditError(str(e)) from None


# ---------------------------------------------------------------------------------------------------------
# one view


def _edit_size(width: int, height: int, long_side: int, multiple: int) -> tuple[int, int]:
    """(width, height) with the longer side ``long_side``, the aspect kept as well as multiples allow."""
    scale = long_side / max(width, height)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    return w, h


def _to_pil(image_u8: Tensor, size: tuple[int, int]) -> Image.Image:
    from PIL import Image

    pil = Image.fromarray(image_u8.cpu().numpy())
    return pil if pil.size == size else pil.resize(size, Image.Resampling.LANCZOS)


def _model_fingerprint(pipe) -> str:
    """Identifies the weights an inversion was made with: the pipeline's name, the UNet's configuration and
    sums of a few of its weights (cheap, and different for any two checkpoints in practice)."""
    unet = pipe.unet
    probes = [unet.conv_in.weight, unet.conv_out.weight, next(iter(unet.down_blocks.parameters()))]
    sums = [repr(round(float(p.detach().double().sum()), 6)) for p in probes]
    name = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")
    return json.dumps([str(name), dict(unet.config), sums], sort_keys=True, default=str)


class ViewEditor:
    """Edits one training view at a time: the photo's inversion (cached on disk), then the edit of a render.

    ``edit(photo, render, strength)`` returns the new training image (uint8 ``[H, W, 3]``, the photo's size)
    and the local-blend mask (bool ``[H, W]``, or None without a blend). A few inversions stay in memory
    (``MEMORY``); the others are read back from the disk cache when their view comes round again, so memory
    does not grow with the number of views (a null-text inversion at 512 px holds ~15 MB).
    """

    MEMORY = 8

    def __init__(self, pipe, cfg: EditConfig, group, cache_dir: Path | None = None):
        from editkit.image import model_multiple
        from editkit.sampling import default_size

        self.pipe, self.cfg, self.group = pipe, cfg, group
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.long_side = cfg.edit_size or max(default_size(pipe))
        self.multiple = model_multiple(pipe)
        self.method = "ddim" if cfg.method == "pnp" else cfg.inversion
        self.fingerprint = _model_fingerprint(pipe)
        self._memory: OrderedDict[str, object] = OrderedDict()  # the latest inversions, by cache key
        self._computed: set[str] = set()
        self._loaded: set[str] = set()
        self.edit_seconds: list[float] = []

    @property
    def computed(self) -> int:
        """Photos inverted by this run."""
        return len(self._computed)

    @property
    def loaded(self) -> int:
        """Photos whose inversion this run found in the disk cache (made by an earlier run)."""
        return len(self._loaded - self._computed)

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        return _edit_size(width, height, self.long_side, self.multiple)

    def _key(self, photo: Image.Image) -> str:
        import numpy as np

        h = hashlib.sha256(b"splat-edit-inversion-1\0")
        h.update(json.dumps([self.fingerprint, self.cfg.source.strip(), self.method, self.cfg.steps,
                             float(self.cfg.guidance), photo.size]).encode())
        h.update(np.asarray(photo).tobytes())
        return h.hexdigest()[:32]

    def inversion(self, photo: Image.Image):
        """The photo's inversion: from this run's memory, the disk cache, or computed (and cached)."""
        from editkit.inversion import Inversion, check_inversion, invert

        key = self._key(photo)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        path = self.cache_dir / f"{key}.safetensors"
        inv = None
        if path.is_file():
            try:
                inv = Inversion.load(path)
                check_inversion(self.pipe, inv)
                f = self.pipe.vae_scale_factor
                if tuple(inv.latents.shape[-2:]) != (photo.height // f, photo.width // f):
                    raise ValueError("made for another image size")
                self._loaded.add(key)
            except ValueError:  # unreadable or from another model: computed again and replaced
                inv = None
        if inv is None:
            inv = invert(self.pipe, photo, self.cfg.source.strip(), self.method, self.cfg.steps, self.cfg.guidance,
                         size=(photo.height, photo.width), progress=False)
            self._computed.add(key)
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                inv.save(path)
            except OSError:  # a read-only cache only costs the next run the inversion again
                pass
        self._memory[key] = inv
        while len(self._memory) > self.MEMORY:
            self._memory.popitem(last=False)
        return inv

    def edit(self, photo_u8: Tensor, render: Tensor, strength: float) -> tuple[Tensor, Tensor | None]:
        import torch

        with torch.no_grad():
            return self._edit(photo_u8, render, strength)

    def _edit(self, photo_u8: Tensor, render: Tensor, strength: float) -> tuple[Tensor, Tensor | None]:
        import torch
        import torch.nn.functional as F

        from editkit.image import image_to_tensor
        from editkit.sampling import decode_latents, encode_image

        t0 = time.perf_counter()
        pipe, cfg = self.pipe, self.cfg
        H, W = photo_u8.shape[:2]
        size = self.size_for(W, H)
        photo = _to_pil(photo_u8, size)
        inv = self.inversion(photo)
        render_u8 = (render.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)  # as a photo would be
        device = pipe._execution_device
        init = encode_image(pipe, image_to_tensor(_to_pil(render_u8, size)).to(device))  # [1, C, h, w]

        mask = None
        if cfg.method == "pnp":
            from editkit.pnp import pnp_edit

            res = pnp_edit(pipe, inv, cfg.target.strip(), num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                           progress=False, output_type="pt", strength=strength, init_latent=init)
            target_latent = res.latents[:1]
        else:
            from editkit.editing import edit_image

            res = edit_image(pipe, inv, cfg.source.strip(), [cfg.target.strip()], edit=self.group.edit,
                             local_blend=self.group.local_blend, progress=False, strength=strength,
                             init_latent=init)
            target_latent = res.latents[1:2]
            if res.mask is not None:
                mask = res.mask[1:2].float()  # [1, 1, h, w]: the target row's (source's included)
        dtype = pipe.unet.dtype
        # the edit and (residual) the render's own VAE round trip: their difference is what the edit changed
        rows = [target_latent, init] if cfg.residual else [target_latent]
        decoded = decode_latents(pipe, torch.cat([r.to(device, dtype) for r in rows]),
                                 output_type="pt").float().cpu()  # [1 or 2, 3, h, w] in [0, 1]
        render_f = (render_u8.permute(2, 0, 1)[None].float() / 255.0).cpu()  # [1, 3, H, W]
        back = lambda x: F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=True)  # noqa: E731
        if cfg.residual:
            edited = render_f + back(decoded[:1] - decoded[1:2])
        else:
            edited = back(decoded[:1])
        edited_u8 = (edited.clamp(0, 1)[0].permute(1, 2, 0) * 255.0).round().to(torch.uint8)
        pixel_mask = None
        if mask is not None:
            pixel_mask = F.interpolate(mask.cpu(), size=(H, W), mode="nearest")[0, 0] > 0.5  # [H, W]
            edited_u8 = torch.where(pixel_mask[..., None], edited_u8, photo_u8.cpu())
        self.edit_seconds.append(time.perf_counter() - t0)
        return edited_u8, pixel_mask


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

    from splat.checkpoint import CheckpointError, read_checkpoint
    from splat.model_io import find_model_file

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


def _continue_optimizers(trainer, ckpt: dict) -> None:
    """Adam's moments from the checkpoint, when it has them (a PLY has not): with fresh moments Adam's
    first steps move every parameter by about the learning rate whatever its gradient, so even an identity
    edit would shift every colour; with the run's moments a small gradient makes a small step."""
    saved = ckpt.get("optimizers")
    if not isinstance(saved, dict):
        return
    for name, opt in trainer.optimizers.items():
        if name in saved:
            opt.load_state_dict(saved[name])
    if trainer.background_logit is not None and isinstance(ckpt.get("background_optimizer"), dict):
        trainer.background_optimizer.load_state_dict(ckpt["background_optimizer"])


def _strength_at(cfg: EditConfig, k: int, total: int) -> float:
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
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from safeio import atomic_write_text
    from splat.config import validate
    from splat.outputs import atomic_save_image, check_output_dir, image_stem, save_comparisons
    from splat.trainer import Trainer, config_from_checkpoint, read_model, resolve_device

    t_start = time.perf_counter()
    run, scene, out = Path(run), Path(scene), Path(out)
    # 1. Inputs: settings and prompts, the run's model, the scene, the output folder (nothing written)
    group = plan_edit(cfg)
    ckpt, file = read_model(run)
    base = config_from_checkpoint(ckpt, str(file))
    start = int(ckpt["step"])
    resumed, resume_file = None, None
    if resume is None:
        _check_out(out)
    else:
        resumed, resume_file = _read_edit_state(resume, cfg, start)
    device = resolve_device(cfg.device)

    # 2. The trainer, continuing from the run's Gaussians: no densification, no opacity reset
    probe = Trainer(scene, dataclasses.replace(base, out=out, device=str(device), resume=None, progress=False,
                                               save_renders=False), checkpoint=ckpt, checkpoint_path=file)
    n_train = len(probe.train_set)
    iterations = cfg.iterations or cfg.edit_every * n_train * 2
    end = start + iterations
    train_cfg = dataclasses.replace(
        probe.cfg, steps=end, eval_steps=(start, end), save_steps=(end,), refine_stop=0, mcmc_refine_stop=0,
        reset_every=0, seed=cfg.seed, save_renders=True,
    )  # fmt: skip
    validate(train_cfg, "edit")
    photos = {i: probe.train_set.image_u8(i).clone() for i in range(n_train)}  # the original photos
    if resumed is None:
        trainer = probe
        trainer.cfg = train_cfg
        trainer.densifier = trainer._make_densifier()
        _continue_optimizers(trainer, ckpt)
    else:  # the edit's own checkpoint: Gaussians, Adam, RNG and metrics (restored by train())
        trainer = Trainer(scene, dataclasses.replace(train_cfg, resume=resume_file), checkpoint=ckpt,
                          checkpoint_path=file)  # fmt: skip
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

    # 4. Before: the held-out views against the original photos
    check_output_dir(out)
    if resumed is None:
        before = trainer.evaluate(start)
        state = {"format": EDIT_STATE_FORMAT, "start_step": start, "settings": _settings(cfg), "edits": 0,
                 "images": {}}  # fmt: skip
        done = 0
    else:
        before = resumed["metrics"].get(str(start), {})
        state = {k: v for k, v in resumed.items() if k not in ("metrics", "step")}  # as saved
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
            with torch.no_grad():
                render, _, _ = tr.render(f.K.to(tr.device), f.viewmat.to(tr.device), f.width, f.height,
                                         tr.active_sh_degree(step))
            image, mask = editor.edit(photos[v], render.cpu(), _strength_at(cfg, state["edits"], total_edits))
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
                pairs.mkdir(parents=True, exist_ok=True)
                tmp = pairs / f".{stem}_{tag}.png.tmp"
                shutil.copyfile(src, tmp)
                os.replace(tmp, pairs / f"{stem}_{tag}.png")
    sheet = save_comparisons(pairs, left="before", right="after", caption="left: before the edit, right: after") \
        if pairs.is_dir() else None
    after = trainer.metrics.get(str(end), {})
    summary = EditResult(
        out=out,
        checkpoint=result.checkpoint,
        ply=result.ply,
        steps=iterations,
        views_edited=state["edits"],
        inversions_computed=editor.computed,
        inversions_loaded=editor.loaded,
        seconds_per_edit=float(np.mean(editor.edit_seconds)) if editor.edit_seconds else 0.0,
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
