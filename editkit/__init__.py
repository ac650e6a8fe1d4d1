"""editkit: training-free diffusion image editing on Stable Diffusion UNets."""

from .hooks import AttentionCall, BatchLayout, Controller, HookError, HookSession, LayerInfo, describe_layers, hooked
from .models import ModelNotFoundError, load_pipeline

__all__ = [
    "AttentionCall",
    "BatchLayout",
    "Controller",
    "HookError",
    "HookSession",
    "LayerInfo",
    "ModelNotFoundError",
    "describe_layers",
    "hooked",
    "load_pipeline",
]
