"""A trained model that can render, and the one function that reads it: ``load_model(path) -> Model``.

``path`` may be
    - a checkpoint written by ``splat train`` (read with ``weights_only=True``; any suffix but the ones in
      :data:`READERS`),
    - a PLY in the original 3DGS layout (ours or the original implementation's),
    - a run folder (``splat train --out``): its newest checkpoint in ``ckpts/``, else its newest
      ``point_cloud/iteration_*/point_cloud.ply``.

A :class:`Model` is the Gaussians (pre-activation, keyed as :data:`splat.gaussians.params.PARAM_KEYS`), the
background the run rendered with and the run's settings (a validated ``TrainConfig``, its paths ignored). It
renders on its own: ``splat render`` / ``eval`` / ``export`` / ``view`` / ``edit`` hold one, never a trainer;
:class:`splat.training.Trainer` holds one and optimises its parameters.

Another file format plugs in as a reader in :data:`READERS`: ``READERS[".xyz"] = read_xyz``, where
``read_xyz(file) -> dict`` returns at least ``{"params": {key: Tensor}}`` (pre-activation, as above) and may
add ``"step"`` (int) and ``"config"`` (the run's options as a dict); see :func:`read_ply_model`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from splat.config import TrainConfig, config_from_checkpoint
from splat.gaussians.checkpoint import CheckpointError, check_scene, read_checkpoint
from splat.gaussians.formats import FormatError, format_for_path, load_gaussians_file
from splat.gaussians.params import PARAM_KEYS
from splat.gaussians.ply import read_ply
from splat.render.rasterization import rasterize


def find_model_file(path: str | Path) -> Path:
    """The file to load for ``path`` (a file itself, or the newest model in a run folder)."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and format_for_path(path) == "sog"):  # a SOG may be a folder
        return path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (expected a run folder, a checkpoint .pt or a .ply)")
    ckpts = sorted((path / "ckpts").glob("ckpt_*.pt"), key=_number_in_name)
    if ckpts:
        return ckpts[-1]
    plys = sorted(
        (path / "point_cloud").glob("iteration_*/point_cloud.ply"), key=lambda p: _number_in_name(p.parent)
    )
    if plys:
        return plys[-1]
    raise CheckpointError(
        f"{path} holds no model: expected ckpts/ckpt_*.pt or point_cloud/iteration_*/point_cloud.ply inside"
    )


def _number_in_name(p: Path) -> int:
    m = re.search(r"(\d+)", p.name)
    return int(m.group(1)) if m else -1


def sh_degree_for(num_coeffs: int, source: str = "model") -> int:
    """SH degree whose ``(d + 1)**2`` coefficients per channel equal ``num_coeffs``."""
    d = round(math.sqrt(num_coeffs)) - 1
    if d < 0 or (d + 1) ** 2 != num_coeffs or d > 3:
        raise CheckpointError(
            f"{source}: {num_coeffs} SH coefficients per channel is not (d+1)^2 for a degree 0..3"
        )
    return d


def activated(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors ``splat.render.rasterize`` takes: means, quats, scales (exp), opacities (sigmoid),
    colors (SH, [N, K, 3])."""
    return {
        "means": params["means"],
        "quats": params["quats"],
        "scales": torch.exp(params["scales"]),
        "opacities": torch.sigmoid(params["opacities"]),
        "colors": torch.cat([params["sh0"], params["shN"]], dim=1),
    }


# ------------------------------------------------------------------------------------------------------
# readers: one per file format, each returning a checkpoint-like dict
# ------------------------------------------------------------------------------------------------------
def read_checkpoint_model(file: Path) -> dict:
    """A ``splat train`` checkpoint as it is (it also holds the optimizer and densifier state)."""
    return read_checkpoint(file)


def read_ply_model(file: Path) -> dict:
    """A 3DGS PLY: its parameters; its step and its run's ``config.json`` when it sits in a run folder
    (``RUN/point_cloud/iteration_N/point_cloud.ply``). No optimizer state, no learned background."""
    return {"params": read_ply(file), "step": _ply_step(file), "config": _run_config_near(file)}


def read_shared_format(file: Path) -> dict:
    """A file in one of the shared formats of :mod:`splat.gaussians.formats` (.splat, compressed PLY, SPZ,
    SOG, the PNG archive), or a plain PLY: its parameters (degree as stored; ``.splat`` keeps none beyond
    the DC term); a plain PLY in a run folder keeps its step and run settings as :func:`read_ply_model`."""
    fmt = format_for_path(file)
    if fmt == "ply":
        try:
            return read_ply_model(file)
        except ValueError:
            pass  # a compressed PLY under a plain .ply name, or a broken file: the codecs tell which
    try:
        params, _ = load_gaussians_file(file, fmt)
    except FormatError as e:
        raise CheckpointError(str(e)) from None
    return {"params": params, "step": None, "config": None, "format": fmt}


READERS: dict[str, Callable[[Path], dict]] = {
    suffix: read_shared_format for suffix in (".ply", ".splat", ".spz", ".sog", ".zip", ".json")
}
"""Readers by lower-case file suffix (a SOG folder too); every other file is read as a checkpoint
(:func:`read_checkpoint_model`)."""


def _ply_step(file: Path) -> int | None:
    m = re.fullmatch(r"iteration_(\d+)", file.parent.name)
    return int(m.group(1)) if m else None


def _run_config_near(file: Path) -> dict | None:
    """The ``config.json`` of the run a PLY belongs to (``RUN/point_cloud/iteration_N/point_cloud.ply``)."""
    candidate = file.parent.parent.parent / "config.json"
    if file.parent.parent.name != "point_cloud" or not candidate.is_file():
        return None
    try:
        data = json.loads(candidate.read_text())
    except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or text
        return None  # not ours, or damaged: treat the PLY as one from elsewhere
    if not isinstance(data, dict):
        return None
    data.pop("run_id", None)  # which run wrote it, not a setting
    return data


# ------------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------------
@dataclass
class Model:
    """Gaussians, the background they are rendered over and the settings of the run that made them.

    ``params`` are pre-activation (``means [N, 3]``, ``scales [N, 3]`` log, ``quats [N, 4]`` wxyz,
    ``opacities [N]`` logit, ``sh0 [N, 1, 3]``, ``shN [N, K-1, 3]``): a plain dict of tensors, or the
    trainer's ``ParameterDict``. With ``config.learn_background`` the colour is learned
    (``background_logit [3]``) and composited after rasterisation (every backend the same formula, with a
    gradient to the colour); otherwise ``background [3]`` goes to the rasteriser.
    """

    params: dict[str, Tensor]
    config: TrainConfig = field(default_factory=TrainConfig)
    step: int = 0
    background: Tensor | None = None  # [3] the configured colour (default: config.background)
    background_logit: Tensor | None = None  # [3] the learned colour's logit (learn_background)
    source: Path | None = None  # the file read (None: made in memory)
    kind: str = "memory"  # "checkpoint" | "ply" | another READERS format | "memory"
    checkpoint: dict | None = None  # everything the file held (optimizer state of a checkpoint, ...)

    def __post_init__(self):
        if self.background is None:
            self.background = torch.tensor(self.config.background, dtype=torch.float32, device=self.device)

    # -- what it is ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    @property
    def num_gaussians(self) -> int:
        return len(self.params["means"])

    @property
    def sh_degree(self) -> int:
        """The degree of the SH coefficients it holds."""
        return sh_degree_for(1 + self.params["shN"].shape[1], str(self.source or "model"))

    def active_sh_degree(self, step: int | None = None) -> int:
        """Degree its run rendered with at ``step`` (1-based; default: the model's step): raised by one
        after every ``sh_degree_interval`` steps, up to ``config.sh_degree``."""
        step = max(self.step if step is None else step, 1)
        return min(self.config.sh_degree, (step - 1) // max(self.config.sh_degree_interval, 1))

    def current_background(self) -> Tensor:
        """The background colour [3] renders use: the learned one with ``learn_background``."""
        if self.background_logit is None:
            return self.background
        return torch.sigmoid(self.background_logit)

    def activated(self) -> dict[str, Tensor]:
        """See :func:`activated`."""
        return activated(self.params)

    def to(self, device: torch.device | str) -> Model:
        """The same model on ``device`` (plain tensors, no gradients)."""
        device = torch.device(device)
        logit = None if self.background_logit is None else self.background_logit.detach().to(device)
        return dataclasses.replace(
            self,
            params={k: v.detach().to(device) for k, v in self.params.items()},
            background=self.background.to(device),
            background_logit=logit,
        )

    def check_scene(self, fingerprint: str, scene: Path) -> None:
        """Refuse a scene other than the one a checkpoint was trained on (a PLY carries no fingerprint)."""
        check_scene(self.checkpoint or {}, fingerprint, self.source or "the model", scene)

    # -- rendering -----------------------------------------------------------------------------------
    def render(self, K: Tensor, viewmat: Tensor, width: int, height: int, sh_degree: int | None = None):
        """Render one view -> (image [H, W, 3], alpha [H, W, 1], meta). ``K`` (3x3 intrinsics, pixels) and
        ``viewmat`` (4x4 world-to-camera, OpenCV axes) may also be numpy arrays or nested lists."""
        K, viewmat = self._as_camera(K, (3, 3), "K"), self._as_camera(viewmat, (4, 4), "viewmat")
        img, alpha, meta = self.render_views(K[None], viewmat[None], width, height, sh_degree)
        return img[0], alpha[0], meta

    def _as_camera(self, value, shape: tuple[int, int], name: str) -> Tensor:
        """A camera matrix from Python as a float32 tensor on the model's device (tensors pass unchanged)."""
        if not isinstance(value, Tensor):
            try:
                value = torch.as_tensor(value, dtype=torch.float32, device=self.device)
            except (TypeError, ValueError) as e:
                raise TypeError(f"{name} must be a {shape[0]}x{shape[1]} matrix of numbers: {e}") from None
        if tuple(value.shape[-2:]) != shape:
            raise ValueError(f"{name} must be {shape[0]}x{shape[1]}, got shape {tuple(value.shape)}")
        return value

    def render_views(
        self, Ks: Tensor, viewmats: Tensor, width: int, height: int, sh_degree: int | None = None,
        depth: bool = False,
    ):
        """Render C views in one call -> (images [C, H, W, 3], alpha [C, H, W, 1], meta); ``sh_degree``
        defaults to :meth:`active_sh_degree`. With ``depth`` the images have a 4th channel, the expected
        depth. The run's ``antialiased`` setting picks the rasterize mode; ``absgrad`` (while gradients
        are recorded) fills ``meta["means2d"].absgrad`` for AbsGS densification.

        Sets ``gaussians_in_view``: False when every Gaussian was culled (nothing of them reaches a loss,
        though a learned background still does)."""
        p = self.params
        learned = self.background_logit is not None
        colors = torch.cat([p["sh0"], p["shN"]], dim=1)  # [N, K, 3]
        img, alpha, meta = rasterize(
            p["means"],
            p["quats"],
            torch.exp(p["scales"]),
            torch.sigmoid(p["opacities"]),
            colors,
            viewmats,
            Ks,
            width,
            height,
            sh_degree=self.active_sh_degree() if sh_degree is None else sh_degree,
            backgrounds=None if learned else self.background[None].expand(len(viewmats), -1),
            backend=self.config.backend,
            rasterize_mode="antialiased" if self.config.antialiased else "classic",
            absgrad=self.config.absgrad and torch.is_grad_enabled(),
            render_mode="RGB+ED" if depth else "RGB",
        )
        self.gaussians_in_view = img.requires_grad
        if learned:  # composited here, the same formula on every backend, with a gradient to the colour
            img = torch.cat([img[..., :3] + (1 - alpha) * self.current_background(), img[..., 3:]], dim=-1)
        return img, alpha, meta


def start_background_logit(model_record: dict, background: Tensor) -> Tensor:
    """The learned background a run starts from: the saved logit, else the configured colour's, kept off
    0 and 1 where the logit is infinite."""
    saved = model_record.get("background_logit")
    if isinstance(saved, Tensor) and saved.shape == (3,):
        return saved.to(background.device, torch.float32)
    return torch.logit(background.clamp(1e-3, 1 - 1e-3))


def checked_params(record: dict, source: str | Path) -> dict[str, Tensor]:
    """The record's Gaussian parameters (float32, contiguous), their shapes checked against each other and
    every value finite."""
    params = record.get("params")
    missing = [k for k in PARAM_KEYS if not isinstance((params or {}).get(k), Tensor)]
    if missing:
        raise CheckpointError(f"{source} has no Gaussian parameter(s) {missing}")
    params = {k: params[k].detach().float().contiguous() for k in PARAM_KEYS}
    n = params["means"].shape[0] if params["means"].dim() else -1
    if n == 0:
        raise CheckpointError(f"{source} holds no Gaussians")
    shapes = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3),
              "shN": (n, params["shN"].shape[1] if params["shN"].dim() == 3 else -1, 3)}
    for key, shape in shapes.items():
        if tuple(params[key].shape) != shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(params[key].shape)}, expected {shape}")
    bad = [k for k in PARAM_KEYS if not bool(torch.isfinite(params[k]).all())]
    if bad:  # NaN / inf would render as nothing, score NaN, or spread into a training run
        raise CheckpointError(f"{source}: {', '.join(bad)} hold non-finite values (NaN or inf); refusing the model")
    return params


def load_model(path: str | Path, device: torch.device | str = "cpu") -> Model:
    """Read a model from a run folder, a checkpoint or a PLY (see the module docstring), onto ``device``.

    A checkpoint's settings are its run's; a PLY's are its run's ``config.json`` when it sits in a run folder
    (else the defaults), at the degree of its SH coefficients, and its step is its ``iteration_N`` folder's
    (unknown: a finished run's ``steps``). Raises :class:`CheckpointError` naming the file.
    """
    file = find_model_file(path)
    suffix = file.suffix.lower()
    reader = read_shared_format if file.is_dir() else READERS.get(suffix, read_checkpoint_model)
    record = reader(file)
    params = checked_params(record, file)
    kind = "checkpoint" if reader is read_checkpoint_model else record.get("format") or suffix.lstrip(".")
    cfg = config_from_checkpoint({"config": record.get("config") or {}}, str(file))
    if kind != "checkpoint":  # the file's own SH degree; its step, else a finished run's
        cfg = dataclasses.replace(cfg, sh_degree=sh_degree_for(1 + params["shN"].shape[1], str(file)))
        step = record.get("step")
        record = {**record, "step": step if step is not None else cfg.steps}
    device = torch.device(device)
    background = torch.tensor(cfg.background, dtype=torch.float32, device=device)
    logit = start_background_logit(record, background) if cfg.learn_background else None
    return Model(
        params={k: v.to(device) for k, v in params.items()},
        config=cfg,
        step=int(record["step"]),
        background=background,
        background_logit=logit,
        source=file,
        kind=kind,
        checkpoint=record,
    )
