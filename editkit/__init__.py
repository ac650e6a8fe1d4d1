"""editkit: training-free diffusion image editing on Stable Diffusion UNets (SD 1.x, 2.x, SDXL) and on the
rectified-flow transformers SD3 / SD3.5 and FLUX.1 (``editkit.flow``).

    >>> import editkit
    >>> from editkit import p2p
    >>> pipe = editkit.load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    >>> out = p2p.generate(pipe, "a cat riding a bicycle", ["a cat riding a car"], p2p.Replace())
    >>> real = editkit.edit_image(pipe, "cat.jpg", "a cat sitting", ["a tiger sitting"], p2p.Replace())
    >>> pnp = editkit.pnp_edit(pipe, "cat.jpg", "a watercolor painting of a cat")
    >>> flux = editkit.load_pipeline("black-forest-labs/FLUX.1-dev", offload=True)
    >>> res = editkit.flowedit(flux, "cat.jpg", "a photo of a cat", "a photo of a fox", generator=0)
"""

from . import p2p
from .editing import edit_image
from .flow.flowedit import FlowEditResult, flowedit
from .flow.inversion import rf_inversion_edit
from .hooks import (
    AttentionCall,
    BatchLayout,
    Controller,
    HookError,
    HookSession,
    LayerInfo,
    describe_layers,
    hooked,
)
from .image import load_image
from .inversion import METHODS as INVERSION_METHODS
from .inversion import Inversion, invert, reconstruct
from .models import ModelNotFoundError, UnsupportedModelError, family_of, load_pipeline
from .pnp import PnPResult, pnp_edit

__all__ = [
    "INVERSION_METHODS",
    "AttentionCall",
    "BatchLayout",
    "Controller",
    "FlowEditResult",
    "HookError",
    "HookSession",
    "Inversion",
    "LayerInfo",
    "ModelNotFoundError",
    "PnPResult",
    "describe_layers",
    "edit_image",
    "family_of",
    "flowedit",
    "hooked",
    "invert",
    "load_image",
    "load_pipeline",
    "p2p",
    "pnp_edit",
    "reconstruct",
    "rf_inversion_edit",
    "UnsupportedModelError",
]
