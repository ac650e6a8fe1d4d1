"""One view at a time: the photo's inversion (cached on disk), then editkit's edit of the render started from it
(Prompt-to-Prompt or Plug-and-Play), brought back to the training image's size. See :mod:`splat.edit`."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from splat.edit.config import EditConfig, default_cache_dir
from splat.edit.fingerprint import pipeline_fingerprint

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor

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
        self.flow = cfg.method == "flowedit"  # SD3 / FLUX: FlowEdit edits the render, no inversion
        native = int(pipe.default_sample_size * pipe.vae_scale_factor) if self.flow else max(default_size(pipe))
        self.long_side = cfg.edit_size or native
        self.multiple = 2 * pipe.vae_scale_factor if self.flow else model_multiple(pipe)  # flows patchify 2x2
        self.method = "ddim" if cfg.method == "pnp" else cfg.inversion
        self.fingerprint = None if self.flow else pipeline_fingerprint(pipe)  # every component's weights and config, once per edit
        self._memory: OrderedDict[str, object] = OrderedDict()  # the latest inversions, by cache key
        self._computed: set[str] = set()
        self._loaded: set[str] = set()
        self.inversion_seconds = 0.0  # spent computing inversions (not reading them from memory or disk)

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

        h = hashlib.sha256(b"splat-edit-inversion-2\0")
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
            t0 = time.perf_counter()
            inv = invert(self.pipe, photo, self.cfg.source.strip(), self.method, self.cfg.steps, self.cfg.guidance,
                         size=(photo.height, photo.width), progress=False)
            self._computed.add(key)
            self.inversion_seconds += time.perf_counter() - t0
            self._cache_write(inv, path)
        self._memory[key] = inv
        while len(self._memory) > self.MEMORY and self._cache_writable:  # without a disk cache all stay here
            self._memory.popitem(last=False)
        return inv

    _cache_writable = True

    def _cache_write(self, inv, path: Path) -> None:
        """Save an inversion to the disk cache. A cache that cannot be written costs the next run the
        inversions again: one warning, then this run keeps every inversion in memory and stops trying."""
        if not self._cache_writable:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            inv.save(path)
        except OSError as e:
            self._cache_writable = False
            print(f"splat edit: warning: the inversion cache {self.cache_dir} cannot be written "
                  f"({e.strerror or e}); inversions are kept in memory for this run only", file=sys.stderr)  # fmt: skip

    def edit(self, photo_u8: Tensor, render: Tensor, strength: float) -> tuple[Tensor, Tensor | None]:
        import torch

        with torch.no_grad():
            return self._edit(photo_u8, render, strength)

    def _edit(self, photo_u8: Tensor, render: Tensor, strength: float) -> tuple[Tensor, Tensor | None]:
        import torch
        import torch.nn.functional as F

        if self.flow:
            return self._flowedit(photo_u8, render, strength), None

        from editkit.image import image_to_tensor
        from editkit.sampling import decode_latents, encode_image

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
        return edited_u8, pixel_mask

    def _flowedit(self, photo_u8: Tensor, render: Tensor, strength: float) -> Tensor:
        """FlowEdit of the render (SD3 / FLUX): the last ``strength`` of the steps (``n_max``), the family's
        reference settings otherwise; noise seeded by the seed and the render, so a resumed edit draws the same.
        With ``residual``: the render plus what the edit changed against the render's own VAE round trip."""
        import hashlib

        import torch
        import torch.nn.functional as F

        from editkit.flow import sampling as fs
        from editkit.flow.flowedit import flowedit
        from editkit.image import image_to_tensor

        pipe, cfg = self.pipe, self.cfg
        H, W = photo_u8.shape[:2]
        size = self.size_for(W, H)
        render_u8 = (render.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)
        pixels = image_to_tensor(_to_pil(render_u8, size)).to(pipe._execution_device)  # [1, 3, h, w] in [-1, 1]
        digest = hashlib.sha256(render_u8.cpu().numpy().tobytes()).digest()
        generator = torch.Generator().manual_seed((cfg.seed * 1_000_003 + int.from_bytes(digest[:6], "big")) % 2**63)
        steps = cfg.steps
        res = flowedit(pipe, pixels.to(pipe.transformer.dtype), cfg.source.strip(), cfg.target.strip(),
                       num_inference_steps=steps, n_max=max(1, min(steps, round(strength * steps))),
                       generator=generator, output_type="latent")  # fmt: skip
        rows = [res.latents, res.source_latents] if cfg.residual else [res.latents]
        decoded = fs.decode_latents(pipe, torch.cat([r.to(pipe.transformer.dtype) for r in rows]), "pt")
        decoded = decoded.float().cpu()  # [1 or 2, 3, h, w] in [0, 1]
        render_f = (render_u8.permute(2, 0, 1)[None].float() / 255.0).cpu()  # [1, 3, H, W]
        back = lambda x: F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=True)  # noqa: E731
        edited = render_f + back(decoded[:1] - decoded[1:2]) if cfg.residual else back(decoded[:1])
        return (edited.clamp(0, 1)[0].permute(1, 2, 0) * 255.0).round().to(torch.uint8)
