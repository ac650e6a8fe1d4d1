"""Prompt-to-Prompt (Hertz et al., ICLR 2023) on the editkit hook layer."""

from .controllers import (
    AttentionEdit,
    AttentionStore,
    LocalBlendControl,
    RefineEdit,
    ReplaceEdit,
    ReweightEdit,
)
from .pipeline import LocalBlend, P2PResult, Refine, Replace, Reweight, generate
from .text import (
    cross_replace_alpha,
    equalizer,
    refinement_mapper,
    replacement_mapper,
    step_window,
    word_token_indices,
)
from .viz import cross_attention_grid, self_attention_components

__all__ = [
    "AttentionEdit",
    "AttentionStore",
    "LocalBlend",
    "LocalBlendControl",
    "P2PResult",
    "Refine",
    "RefineEdit",
    "Replace",
    "ReplaceEdit",
    "Reweight",
    "ReweightEdit",
    "cross_attention_grid",
    "cross_replace_alpha",
    "equalizer",
    "generate",
    "refinement_mapper",
    "replacement_mapper",
    "self_attention_components",
    "step_window",
    "word_token_indices",
]
