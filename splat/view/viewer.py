"""A web viewer for Gaussians, on viser: ``Viewer(params, sh_degree, cameras).url``.

The browser shows viser's 3D scene (orbit controls, the training cameras as frustums) with our render as
its background image. Each time a browser's camera moves, or a setting changes, or training has new
Gaussians, a render thread draws that client's view with :func:`splat.render.modes.render_mode` (so
``splat.render.rasterization.rasterize``: gsplat on CUDA, the reference twin on CPU) and sends it. Renders are
"latest wins": a camera that moves again while a frame is being drawn is drawn once more, afterwards.

Camera conventions: viser reports a camera's ``wxyz`` / ``position`` as the camera-to-world ``[R | t]``
with OpenCV axes (x right, y down, z forward), the same axes as our world-to-camera ``viewmats``; its
``fov`` is vertical, in radians. The rendered image keeps the browser canvas's aspect, with its long
side set by the "Resolution" control (default: 1920 on CUDA, 128 on CPU, where the reference renderer
takes seconds per 256 px frame).

During training (``Viewer.on_train_step`` as a ``Trainer.step_callbacks`` entry) the callback returns at
once when no browser is connected; otherwise it copies the Gaussians at most ``train_update_s`` apart
(the copy is what the render thread draws, so training never waits for a render and is never changed
by one: rendering reads a copy and draws no random numbers).
"""

from __future__ import annotations

import io
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from splat.gaussians.model import activated
from splat.render.modes import RENDER_MODES, render_mode
from splat.scene.cameras import SceneCameras
from splat.view.camera_path import camera_centres, quat_to_rotmat, rotmat_to_quat, scene_frame

CPU_RESOLUTION = 128  # long side of a render on CPU (reference renderer)
GPU_RESOLUTION = 1920  # long side on CUDA (1080p for a 16:9 canvas)


@dataclass
class RenderedFrame:
    """One frame sent to one browser, with the camera it was drawn from."""

    image: np.ndarray  # [H, W, 3] uint8, what was sent
    K: Tensor  # [3, 3]
    viewmat: Tensor  # [4, 4] world-to-camera
    width: int
    height: int
    sh_degree: int
    mode: str
    background: tuple[float, float, float]
    step: int | None  # training step of the Gaussians drawn (None: a loaded model)
    seconds: float  # time spent rendering
    index: int  # running count of frames sent by this viewer


def viser_camera_to_view(
    wxyz: np.ndarray, position: np.ndarray, fov: float, aspect: float, resolution: int
) -> tuple[Tensor, Tensor, int, int]:
    """A viser camera (camera-to-world rotation ``wxyz``, centre, vertical fov) -> (K, viewmat, W, H)
    for an image whose long side is ``resolution`` and whose width / height is ``aspect``."""
    if aspect >= 1:
        width, height = resolution, max(1, round(resolution / aspect))
    else:
        width, height = max(1, round(resolution * aspect)), resolution
    fy = 0.5 * height / math.tan(0.5 * fov)
    K = torch.tensor([[fy, 0.0, width / 2], [0.0, fy, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float32)
    R = quat_to_rotmat(np.asarray(wxyz, dtype=np.float64))  # camera-to-world rotation
    viewmat = np.eye(4)
    viewmat[:3, :3] = R.T
    viewmat[:3, 3] = -R.T @ np.asarray(position, dtype=np.float64)
    return K, torch.from_numpy(viewmat).float(), width, height


class Viewer:
    """Serve the Gaussians ``params`` (pre-activation, as ``splat.gaussians.Model.params``)."""

    def __init__(
        self,
        params: dict[str, Tensor],
        sh_degree: int,
        cameras: SceneCameras | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        device: str | torch.device = "cpu",
        backend: str = "auto",
        resolution: int | None = None,
        transport: str = "jpeg",
        background: tuple[float, float, float] = (0.0, 0.0, 0.0),
        train_update_s: float = 1.0,
        verbose: bool = False,
    ):
        try:
            import viser  # lazy: only the viewer needs it
        except ImportError as e:
            raise ValueError(
                f"the viewer needs the viser package ({e}); pip install 'editkit-splat[viewer]'"
            ) from e

        if transport not in ("jpeg", "png"):
            raise ValueError(f"transport must be 'jpeg' or 'png', got {transport!r}")
        self.device = torch.device(device)
        self.backend = backend
        self.transport = transport
        self.max_sh_degree = sh_degree
        self.sh_degree = sh_degree
        self.mode = "rgb"
        self.background = tuple(float(c) for c in background)
        default_res = GPU_RESOLUTION if self.device.type == "cuda" else CPU_RESOLUTION
        self.resolution = int(resolution or default_res)
        self.cameras = cameras
        self.train_update_s = train_update_s
        self.step: int | None = None
        self.frames: dict[int, RenderedFrame] = {}  # client id -> last frame sent
        self.frames_sent = 0

        self._gaussians = self._prepare(params)
        self._lock = threading.Lock()  # guards _gaussians and the settings during a render
        self._cond = threading.Condition()
        self._dirty: set[int] = set()
        self._stopped = False
        self._last_copy = 0.0
        self._stats_text = ""

        if cameras is not None and len(cameras) >= 2:
            self.centre, self.up = scene_frame(cameras.viewmats)
            centres = camera_centres(cameras.viewmats)
            self.radius = float(np.linalg.norm(centres - self.centre, axis=1).mean()) or 1.0
        else:
            means = params["means"].detach().cpu().double().numpy()
            self.centre = np.median(means, axis=0)
            self.up = np.array([0.0, -1.0, 0.0])  # COLMAP captures: y points down in the first camera
            self.radius = float(np.percentile(np.linalg.norm(means - self.centre, axis=1), 90)) * 2.5 or 1.0

        self.server = viser.ViserServer(host=host, port=port, label="splat", verbose=verbose)
        self.server.scene.set_up_direction(tuple(self.up))
        self._build_gui()
        self._add_frustums()
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        self._thread = threading.Thread(target=self._render_loop, name="splat-viewer", daemon=True)
        self._thread.start()

    # -- public ----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.server.get_port()}/"

    def has_clients(self) -> bool:
        return bool(self.server.get_clients())

    def update_gaussians(self, params: dict[str, Tensor], step: int | None = None) -> None:
        """Show new Gaussians (a copy is taken) and redraw every client."""
        g = self._prepare(params)
        with self._lock:
            self._gaussians = g
            self.step = step
        self._mark_all_dirty()

    def on_train_step(self, trainer, step: int, loss, psnr) -> None:
        """``Trainer.step_callbacks`` entry: nothing to do without a browser; else refresh now and then."""
        if not self.server.get_clients():
            return
        now = time.perf_counter()
        last = step == trainer.cfg.steps
        if now - self._last_copy < self.train_update_s and not last:
            return
        self._last_copy = now
        n = len(trainer.params["means"])
        self._stats.content = (
            f"**step** {step} / {trainer.cfg.steps}  \n**loss** {float(loss):.4f}  \n"
            f"**PSNR** {float(psnr):.2f} dB  \n**Gaussians** {n:,}"
        )
        self.update_gaussians(dict(trainer.params.items()), step)

    def render(self, K: Tensor, viewmat: Tensor, width: int, height: int) -> np.ndarray:
        """Draw the current Gaussians with the current settings: ``uint8 [H, W, 3]``."""
        with self._lock:
            g, sh, mode, bg = self._gaussians, self.sh_degree, self.mode, self.background
        return render_mode(
            g,
            K.to(self.device),
            viewmat.to(self.device),
            width,
            height,
            sh,
            torch.tensor(bg, dtype=torch.float32, device=self.device),
            mode,
            self.backend,
        )

    def client_view(self, client, resolution: int | None = None) -> tuple[Tensor, Tensor, int, int]:
        cam = client.camera
        aspect = cam.image_width / max(cam.image_height, 1) if cam.image_height else 4 / 3
        return viser_camera_to_view(cam.wxyz, cam.position, cam.fov, aspect, resolution or self.resolution)

    def screenshot(self, client) -> bytes:
        """PNG bytes of ``client``'s view at its canvas size (GPU) or the render resolution (CPU)."""
        cam = client.camera
        res = max(cam.image_width, cam.image_height) if self.device.type == "cuda" else self.resolution
        K, viewmat, w, h = self.client_view(client, res)
        buf = io.BytesIO()
        Image.fromarray(self.render(K, viewmat, w, h)).save(buf, format="PNG")
        return buf.getvalue()

    def jump_to_view(self, client, index: int) -> None:
        """Move ``client``'s camera onto training camera ``index`` (what a click on a frustum does)."""
        cams = self.cameras
        if cams is None or not 0 <= index < len(cams):
            raise ValueError(f"no camera {index}; the scene has {0 if cams is None else len(cams)}")
        w2c = cams.viewmats[index]
        R = w2c[:3, :3]
        centre = -R.T @ w2c[:3, 3]
        forward, down = R[2], R[1]
        dist = max(float(np.dot(self.centre - centre, forward)), 1e-3 * self.radius)
        w, h = cams.sizes[index]
        with client.atomic():
            client.camera.fov = 2 * math.atan(0.5 * h / cams.Ks[index][1, 1])
            client.camera.position = centre
            client.camera.look_at = centre + dist * forward
            client.camera.up_direction = -down

    def set_view_image(self, name: str, image: np.ndarray, max_side: int = 256) -> None:
        """Show ``image`` (uint8 ``[H, W, 3]``) in the frustum of the view named ``name`` (e.g. a training
        image as ``splat edit`` has just replaced it), scaled to at most ``max_side`` pixels."""
        if self.cameras is None or name not in self.cameras.names:
            return
        pil = Image.fromarray(np.ascontiguousarray(image))
        if max(pil.size) > max_side:
            scale = max_side / max(pil.size)
            pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.Resampling.LANCZOS)
        self.frustums[self.cameras.names.index(name)].image = np.asarray(pil)

    def set_mode(self, mode: str) -> None:
        """Switch the render mode (as the "Render mode" control does) and redraw."""
        if mode not in RENDER_MODES:
            raise ValueError(f"unknown render mode {mode!r}; choose from {', '.join(RENDER_MODES)}")
        with self._lock:
            self.mode = mode
        self._mode_control.value = mode
        self._mark_all_dirty()

    def show_cameras(self, visible: bool) -> None:
        for frustum in self.frustums:
            frustum.visible = visible

    def wait_for_frame(self, after: int, timeout: float = 60.0) -> RenderedFrame | None:
        """Block until a frame with ``index > after`` was sent; return the newest, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.frames_sent <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return max(self.frames.values(), key=lambda f: f.index)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self.server.stop()

    # -- internals -------------------------------------------------------------------------------------
    def _prepare(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        with torch.no_grad():
            return {k: v.detach().to(self.device).clone() for k, v in activated(params).items()}

    def _mark_dirty(self, client_id: int) -> None:
        with self._cond:
            self._dirty.add(client_id)
            self._cond.notify_all()

    def _mark_all_dirty(self) -> None:
        with self._cond:
            self._dirty.update(self.server.get_clients())
            self._cond.notify_all()

    def _on_connect(self, client) -> None:
        client.camera.on_update(lambda cam: self._mark_dirty(cam.client.client_id))
        if self.cameras is not None and len(self.cameras):
            first = int(np.flatnonzero(self.cameras.train)[0]) if self.cameras.train.any() else 0
            self.jump_to_view(client, first)
        else:
            with client.atomic():
                client.camera.up_direction = self.up
                client.camera.position = self.centre + self.radius * np.cross(self.up, [1.0, 0.0, 0.0])
                client.camera.look_at = self.centre
        self._mark_dirty(client.client_id)

    def _on_disconnect(self, client) -> None:
        with self._cond:
            self._dirty.discard(client.client_id)  # its last frame stays in `frames` (tests, tools)

    def _render_loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._stopped:
                    self._cond.wait(0.5)
                if self._stopped:
                    return
                ids, self._dirty = self._dirty, set()
            clients = self.server.get_clients()
            for cid in sorted(ids):
                client = clients.get(cid)
                if client is not None:
                    self._draw(client)

    def _draw(self, client) -> None:
        K, viewmat, w, h = self.client_view(client)
        with self._lock:
            sh, mode, bg, step = self.sh_degree, self.mode, self.background, self.step
        t0 = time.perf_counter()
        image = self.render(K, viewmat, w, h)
        seconds = time.perf_counter() - t0
        client.scene.set_background_image(image, format=self.transport, jpeg_quality=90)
        client.flush()
        with self._cond:
            self.frames_sent += 1
            self.frames[client.client_id] = RenderedFrame(
                image, K, viewmat, w, h, sh, mode, bg, step, seconds, self.frames_sent
            )
            self._cond.notify_all()
        self._timing.content = f"{w}x{h} in {seconds * 1000:.0f} ms"

    def _build_gui(self) -> None:
        gui = self.server.gui
        self._stats = gui.add_markdown("")
        self._timing = gui.add_markdown("")
        res = gui.add_slider(
            "Resolution",
            min=32,
            max=4096,
            step=16,
            initial_value=self.resolution,
            hint="long side of the rendered image, in pixels",
        )
        sh = gui.add_dropdown(
            "SH degree",
            tuple(str(d) for d in range(self.max_sh_degree + 1)),
            initial_value=str(self.max_sh_degree),
        )
        mode = self._mode_control = gui.add_dropdown("Render mode", RENDER_MODES, initial_value=self.mode)
        bg = gui.add_rgb("Background", tuple(int(round(c * 255)) for c in self.background))
        show = gui.add_checkbox("Show cameras", initial_value=True)
        shot = gui.add_button("Screenshot")

        def setter(fn):
            def cb(event) -> None:
                with self._lock:
                    fn(event.target.value)
                self._mark_all_dirty()

            return cb

        res.on_update(setter(lambda v: setattr(self, "resolution", int(v))))
        sh.on_update(setter(lambda v: setattr(self, "sh_degree", int(v))))
        mode.on_update(setter(lambda v: setattr(self, "mode", v)))
        bg.on_update(setter(lambda v: setattr(self, "background", tuple(c / 255.0 for c in v))))
        show.on_update(lambda event: self.show_cameras(event.target.value))

        @shot.on_click
        def _(event) -> None:
            if event.client is not None:
                name = "splat.png" if self.step is None else f"splat_step{self.step}.png"
                event.client.send_file_download(name, self.screenshot(event.client))

    def _add_frustums(self) -> None:
        self.frustums = []
        cams = self.cameras
        if cams is None:
            return
        scale = 0.08 * self.radius
        for i in range(len(cams)):
            w2c = cams.viewmats[i]
            R = w2c[:3, :3]
            w, h = cams.sizes[i]
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}",
                fov=2 * math.atan(0.5 * h / cams.Ks[i][1, 1]),
                aspect=w / h,
                scale=scale,
                thickness=0.01 * scale,
                color=(90, 90, 90) if cams.train[i] else (230, 120, 20),
                wxyz=rotmat_to_quat(R.T),
                position=-R.T @ w2c[:3, 3],
            )
            frustum.on_click(lambda event, i=i: self.jump_to_view(event.client, i))
            self.frustums.append(frustum)
