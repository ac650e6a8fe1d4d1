"""The attention hook layer every edit in editkit runs through.

One processor type, :class:`HookProcessor`, is installed on every attention layer of a diffusers
``UNet2DConditionModel`` through ``unet.set_attn_processor`` (the supported way in); :func:`hooked` is a
context manager that installs it and puts the previous processors back on exit, whatever happens inside.

Each call of a hooked layer knows, through :class:`AttentionCall`:

* the layer (:class:`LayerInfo`): its processor name, its place in the UNet (``"down"``, ``"mid"``,
  ``"up"``), self or cross attention, and its downsampling factor relative to the latent, derived from the
  block index and the model's own config (never from hard-coded sizes);
* its spatial resolution ``(h, w)`` for the current latent size;
* the current denoising step, set explicitly by the sampling loop with :meth:`HookSession.set_step`
  (never by counting calls, so a skipped or repeated call cannot desynchronise it);
* the batch layout (:class:`BatchLayout`): which rows are unconditional / conditional and which prompt
  (source or target) each row holds.

Controllers (:class:`Controller`) say per call whether they need the layer's query/key or its attention
probabilities. A layer that no controller needs in a call runs the processor it had before (fused SDPA
for a stock diffusers UNet), so layers nothing reads keep the fast path; only the layers a controller needs
materialise the ``softmax(QK^T / sqrt(d))`` probabilities.

The same processor hooks the multimodal diffusion transformers (MM-DiT) of Stable Diffusion 3 / 3.5
(``SD3Transformer2DModel``, ``JointAttnProcessor2_0``) and FLUX.1 (``FluxTransformer2DModel``,
``FluxAttnProcessor``). There text and image tokens share one attention over their concatenated sequence;
:class:`LayerInfo` says which stream a layer belongs to (``place``: ``"joint"`` for SD3 blocks and FLUX
double-stream blocks, ``"single"`` for FLUX single-stream blocks, ``"image"`` for SD3.5's image-only second
attention) and :class:`TokenLayout` (``AttentionCall.tokens``) which positions of the sequence are text and
which image: SD3 concatenates ``[image | text]``, FLUX ``[text | image]``. The image grid is the latent size
divided by the layer's patch factor (``patch_size`` of the SD3 config; ``2 * patch_size`` for FLUX, whose
pipeline packs 2x2 latent patches into one token before the transformer).

Notation in this module::

    B      rows in the UNet batch (2 * num_prompts with classifier-free guidance, else num_prompts)
    H      attention heads of the layer
    N      query tokens = h * w pixels of the layer's feature map
    M      key tokens = N (self-attention) or the text length, 77 for CLIP (cross-attention)
    d      head dimension
    L      MM-DiT: text + image tokens of the joint sequence (controllers see [B, H, L, d] / [B, H, L, L])
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

_NAME = re.compile(r"^(?P<block>down_blocks|mid_block|up_blocks)(?:\.(?P<index>\d+))?\..*\.(?P<attn>attn\d)\.processor$")
_DIT_NAME = re.compile(r"^(?P<blocks>transformer_blocks|single_transformer_blocks)\.(?P<index>\d+)\.(?P<attn>attn2?)\.processor$")
TRANSFORMER_PLACES = ("joint", "single", "image")  # LayerInfo.place of MM-DiT layers


class HookError(RuntimeError):
    """The hook layer could not be installed or used as asked."""


@dataclass(frozen=True)
class LayerInfo:
    """Where an attention layer sits in the model, derived from its name and the model config.

    UNet layers: ``place`` is ``"down"``, ``"mid"`` or ``"up"``, ``factor`` the downsampling of the layer's
    feature map relative to the latent. MM-DiT layers: ``place`` is ``"joint"`` (SD3 block, FLUX double-stream
    block), ``"single"`` (FLUX single-stream block) or ``"image"`` (SD3.5's image-only ``attn2``); ``factor``
    is the side of the latent patch one image token covers; ``text_first`` the order of the joint sequence.
    """

    name: str  # processor key, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    place: str  # "down" | "mid" | "up" (UNet); "joint" | "single" | "image" (MM-DiT)
    block: int  # index of the down/up block (0 for mid); MM-DiT: index in its own block list
    is_cross: bool  # attn2 in a UNet transformer block: keys and values come from the text encoder
    factor: int  # the layer's map is the latent downsampled `factor` times (1, 2, 4, ...); MM-DiT: patch side
    text_first: bool = False  # MM-DiT: the joint sequence is [text | image] (FLUX), else [image | text] (SD3)
    depth: int = 0  # MM-DiT: position of the block in the whole stack (FLUX single blocks follow the double ones)

    @property
    def is_transformer(self) -> bool:
        return self.place in TRANSFORMER_PLACES

    def resolution(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Feature-map size (UNet) or image token grid (MM-DiT) of this layer for a latent of size ``latent_hw``.

        Each diffusers downsampler is a 3x3 stride-2 convolution with padding 1, i.e. ``ceil(x / 2)``; an MM-DiT
        patch embedding cuts ``factor x factor`` patches, i.e. ``x // factor``.
        """
        h, w = latent_hw
        if self.is_transformer:
            return h // self.factor, w // self.factor
        for _ in range(int(math.log2(self.factor))):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w


def _family(model) -> str | None:
    names = {c.__name__ for c in type(model).__mro__}
    if "FluxTransformer2DModel" in names:
        return "flux"
    if "SD3Transformer2DModel" in names:
        return "sd3"
    return None


def describe_layers(model) -> dict[str, LayerInfo]:
    """Map every attention processor name of ``model`` (a UNet or an MM-DiT transformer) to its :class:`LayerInfo`.

    UNet: the downsampling factor of ``down_blocks.i`` is ``2**i`` (every down block but the last halves the
    resolution at its end), of the mid block ``2**(n-1)``, and of ``up_blocks.i`` ``2**(n-1-i)``, with
    ``n = len(unet.config.down_block_types)``. This holds for SD 1.x, 2.x and SDXL alike.

    MM-DiT: SD3 / SD3.5 ``transformer_blocks.i.attn`` are joint ``[image | text]`` layers and
    ``transformer_blocks.i.attn2`` (SD3.5's dual-attention blocks) image-only; FLUX.1
    ``transformer_blocks.i.attn`` are double-stream and ``single_transformer_blocks.i.attn`` single-stream
    ``[text | image]`` layers. The patch factor is ``config.patch_size`` (SD3) or ``2 * config.patch_size``
    (FLUX: the pipeline packs 2x2 latent patches per token).
    """
    family = _family(model)
    if family is not None:
        return _describe_transformer(model, family)
    n = len(model.config.down_block_types) if hasattr(model.config, "down_block_types") else 0
    out: dict[str, LayerInfo] = {}
    for name in model.attn_processors:
        m = _NAME.match(name)
        if m is None:
            raise HookError(
                f"cannot place attention layer {name!r}: editkit hooks UNet2DConditionModel-style UNets "
                "(down_blocks / mid_block / up_blocks) and SD3 / FLUX.1 transformers"
            )
        block = m["block"]
        index = int(m["index"] or 0)
        if block == "down_blocks":
            place, factor = "down", 2**index
        elif block == "mid_block":
            place, factor = "mid", 2 ** (n - 1)
        else:
            place, factor = "up", 2 ** (n - 1 - index)
        out[name] = LayerInfo(name=name, place=place, block=index, is_cross=m["attn"] == "attn2", factor=factor)
    return out


def _describe_transformer(model, family: str) -> dict[str, LayerInfo]:
    patch = int(model.config.patch_size)
    factor = 2 * patch if family == "flux" else patch
    num_double = len(model.transformer_blocks)
    out: dict[str, LayerInfo] = {}
    for name in model.attn_processors:
        m = _DIT_NAME.match(name)
        if m is None:
            raise HookError(f"cannot place attention layer {name!r} of {type(model).__name__}")
        index = int(m["index"])
        if m["blocks"] == "single_transformer_blocks":
            place, depth = "single", num_double + index
        else:
            place, depth = ("image" if m["attn"] == "attn2" else "joint"), index
        out[name] = LayerInfo(name=name, place=place, block=index, is_cross=False, factor=factor,
                              text_first=family == "flux", depth=depth)
    return out


@dataclass(frozen=True)
class TokenLayout:
    """Which positions of an MM-DiT layer's joint sequence are text and which image."""

    num_text: int
    num_image: int
    text_first: bool

    @property
    def length(self) -> int:
        return self.num_text + self.num_image

    @property
    def text(self) -> slice:
        return slice(0, self.num_text) if self.text_first else slice(self.num_image, self.length)

    @property
    def image(self) -> slice:
        return slice(self.num_text, self.length) if self.text_first else slice(0, self.num_image)


@dataclass(frozen=True)
class BatchLayout:
    """Which rows of the UNet batch hold what.

    The sampling loops in editkit build the batch as diffusers does: with classifier-free guidance
    ``[uncond(prompt_0..P-1), cond(prompt_0..P-1)]``, else ``[cond(prompt_0..P-1)]``. Prompt 0 is the
    source, prompts 1.. are the targets.
    """

    num_prompts: int
    cfg: bool

    @property
    def batch_size(self) -> int:
        return 2 * self.num_prompts if self.cfg else self.num_prompts

    @property
    def cond(self) -> slice:
        """Rows of the conditional half (prompt order)."""
        return slice(self.num_prompts, 2 * self.num_prompts) if self.cfg else slice(0, self.num_prompts)

    @property
    def uncond(self) -> slice | None:
        return slice(0, self.num_prompts) if self.cfg else None


@dataclass
class AttentionCall:
    """Everything a controller may want to know about one call of one attention layer."""

    layer: LayerInfo
    step: int  # index of the denoising step, 0-based, set by the sampling loop
    num_steps: int
    timestep: int | float | None
    layout: BatchLayout
    resolution: tuple[int, int]  # (h, w) of the layer's feature map (MM-DiT: the image token grid)
    latent_hw: tuple[int, int]
    tokens: TokenLayout | None = None  # MM-DiT: text and image positions of the joint sequence
    substep: int = 0  # which model call of the step (a second-order solver's midpoint call is 1)


class Controller:
    """Base class of everything that reads or edits attention.

    Override what you need; the defaults read and edit nothing, so the layer keeps its fast path.
    A controller that reads or edits only the conditional rows sets ``cond_rows_only = True``: when every
    controller of a layer does, the unconditional half keeps the fused kernel and ``on_probs`` receives
    the conditional rows alone, described by a layout without guidance (``layout.cond`` still selects them).
    """

    cond_rows_only: bool = False

    def wants_qk(self, call: AttentionCall) -> bool:
        return False

    def wants_probs(self, call: AttentionCall) -> bool:
        return False

    def wants_values(self, call: AttentionCall) -> bool:
        return False

    def on_qk(self, query: torch.Tensor, key: torch.Tensor, call: AttentionCall):
        """``query: [B, H, N, d]``, ``key: [B, H, M, d]``; return the pair to attend with.

        MM-DiT: ``[B, H, L, d]`` over the joint sequence (``call.tokens`` says where text and image are),
        after the QK normalisation and FLUX's rotary embedding, i.e. exactly what the attention multiplies."""
        return query, key

    def on_values(self, value: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        """``value: [B, H, M, d]`` (MM-DiT ``[B, H, L, d]``); return the values to attend to."""
        return value

    def on_probs(self, probs: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        """``probs: [B, H, N, M]`` (rows sum to 1); return the probabilities to apply to the values."""
        return probs

    def on_step_end(self, latents: torch.Tensor, session: HookSession) -> torch.Tensor:
        """Called by the sampling loop after each scheduler step with the new latents ``[P, C, h, w]``."""
        return latents

    def reset(self) -> None:
        """Forget everything from a previous run."""


@dataclass
class HookSession:
    """The shared state of one hooked run: the step clock, batch layout and controllers."""

    layers: dict[str, LayerInfo]
    controllers: list[Controller]
    layout: BatchLayout | None = None
    latent_hw: tuple[int, int] | None = None
    num_steps: int = 0
    step: int = 0
    timestep: int | float | None = None
    substep: int = 0
    materialised: set[str] = field(default_factory=set)  # layers that computed probabilities at least once

    def begin(self, layout: BatchLayout, latent_hw: tuple[int, int], num_steps: int) -> None:
        """Start a run: the sampling loop calls this before its first UNet call."""
        self.layout = layout
        self.latent_hw = tuple(latent_hw)
        self.num_steps = num_steps
        self.step = 0
        self.timestep = None
        self.substep = 0

    def set_step(self, step: int, timestep=None, substep: int = 0) -> None:
        """Set the clock before a model call. ``timestep`` is kept as an int when it is whole (DDIM), else as a
        float (flow-matching timesteps ``1000 * sigma``). ``substep`` numbers the model calls of one step
        (0; 1 for a second-order solver's midpoint call), so recorded features of each call can be told apart."""
        self.step = int(step)
        self.substep = int(substep)
        if timestep is None:
            self.timestep = None
        else:
            t = float(timestep)
            self.timestep = int(t) if t.is_integer() else t

    def step_end(self, latents: torch.Tensor) -> torch.Tensor:
        for controller in self.controllers:
            latents = controller.on_step_end(latents, self)
        return latents

    def call_for(self, layer: LayerInfo, num_tokens: int, num_text: int | None = None) -> AttentionCall | None:
        """The call of ``layer`` on ``num_tokens`` query tokens (MM-DiT: image tokens, with ``num_text`` text
        tokens), or ``None`` outside a run begun with :meth:`begin`."""
        if self.layout is None or self.latent_hw is None:
            return None  # not inside an editkit sampling loop: behave like the original processor
        h, w = layer.resolution(self.latent_hw)
        if layer.is_transformer and h * w != num_tokens:
            raise HookError(
                f"layer {layer.name} got {num_tokens} image tokens but a {self.latent_hw[0]}x{self.latent_hw[1]} "
                f"latent in {layer.factor}x{layer.factor} patches gives {h}x{w}={h * w}; was HookSession.begin() "
                "given the (unpacked) latent size of this run?"
            )
        if h * w != num_tokens:
            raise HookError(
                f"layer {layer.name} got {num_tokens} query tokens but a {self.latent_hw[0]}x{self.latent_hw[1]} "
                f"latent downsampled {layer.factor}x gives {h}x{w}={h * w}; was HookSession.begin() given "
                "the latent size of this run?"
            )
        return AttentionCall(
            layer=layer,
            step=self.step,
            num_steps=self.num_steps,
            timestep=self.timestep,
            layout=self.layout,
            resolution=(h, w),
            latent_hw=self.latent_hw,
            tokens=None if num_text is None else TokenLayout(num_text, num_tokens, layer.text_first),
            substep=self.substep,
        )


class HookProcessor:
    """The one processor editkit installs on every attention layer.

    It delegates to the layer's previous processor (fused SDPA on a stock UNet) unless a controller needs
    the layer in this call; then it computes attention explicitly, lets controllers edit the query/key and
    the probabilities, and applies them to the values. The explicit path follows diffusers'
    ``AttnProcessor`` step by step, so with no edit both paths agree to float tolerance.
    """

    def __init__(self, layer: LayerInfo, session: HookSession, fallback):
        self.layer = layer
        self.session = session
        self.fallback = fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if self.layer.is_transformer:
            # FLUX passes its rotary embedding where UNet processors take `temb` (fifth positional argument)
            return self._transformer(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        session = self.session
        num_tokens = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        call = session.call_for(self.layer, num_tokens)
        qk_ctrl, v_ctrl, probs_ctrl = self._wanted(call)
        if not qk_ctrl and not v_ctrl and not probs_ctrl:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self._explicit(attn, hidden_states, encoder_hidden_states, attention_mask, temb, call,
                              qk_ctrl, v_ctrl, probs_ctrl)

    def _wanted(self, call):
        """The controllers that need this call: (Q/K editors, V editors, probability readers/editors)."""
        if call is None:
            return (), (), ()
        controllers = self.session.controllers
        return ([c for c in controllers if c.wants_qk(call)], [c for c in controllers if c.wants_values(call)],
                [c for c in controllers if c.wants_probs(call)])

    def _explicit(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, call, qk_ctrl, v_ctrl, probs_ctrl):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, N, d]
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, M, d]
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, M, d]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        for controller in qk_ctrl:
            query, key = controller.on_qk(query, key, call)
        for controller in v_ctrl:
            value = controller.on_values(value, call)

        hidden_states = self._attend(attn, query, key, value, attention_mask, call, probs_ctrl)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


    # --- MM-DiT ------------------------------------------------------------------------------------------
    def _transformer(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, *args, **kwargs):
        layer, session = self.layer, self.session
        call = None
        if session.layout is not None and session.latent_hw is not None:
            h, w = layer.resolution(session.latent_hw)
            if layer.place == "single":  # FLUX single-stream: hidden_states is already [text | image]
                num_image, num_text = h * w, hidden_states.shape[1] - h * w
                if num_text < 0:
                    raise HookError(f"layer {layer.name} got {hidden_states.shape[1]} tokens, fewer than the {h}x{w} "
                                    f"image tokens of a {session.latent_hw[0]}x{session.latent_hw[1]} latent")
            else:
                num_image = hidden_states.shape[1]
                num_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
            call = session.call_for(layer, num_image, num_text)
        qk_ctrl, v_ctrl, probs_ctrl = self._wanted(call)
        if not qk_ctrl and not v_ctrl and not probs_ctrl:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, *args, **kwargs)
        if layer.text_first:
            return self._flux(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, call,
                              qk_ctrl, v_ctrl, probs_ctrl)
        return self._sd3(attn, hidden_states, encoder_hidden_states, attention_mask, call, qk_ctrl, v_ctrl, probs_ctrl)

    def _edit_and_attend(self, attn, query, key, value, attention_mask, call, qk_ctrl, v_ctrl, probs_ctrl):
        for controller in qk_ctrl:
            query, key = controller.on_qk(query, key, call)
        for controller in v_ctrl:
            value = controller.on_values(value, call)
        return self._attend(attn, query, key, value, attention_mask, call, probs_ctrl)

    def _sd3(self, attn, hidden_states, encoder_hidden_states, attention_mask, call, qk_ctrl, v_ctrl, probs_ctrl):
        """diffusers' ``JointAttnProcessor2_0`` step by step, with the controllers between Q/K/V and the output."""
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, N, d]
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            eq = attn.add_q_proj(encoder_hidden_states).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            ek = attn.add_k_proj(encoder_hidden_states).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            ev = attn.add_v_proj(encoder_hidden_states).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query = torch.cat([query, eq], dim=2)  # [B, H, N + T, d]: image first
            key = torch.cat([key, ek], dim=2)
            value = torch.cat([value, ev], dim=2)

        out = self._edit_and_attend(attn, query, key, value, attention_mask, call, qk_ctrl, v_ctrl, probs_ctrl)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        if encoder_hidden_states is not None:
            num_image = hidden_states.shape[1]
            out, text_out = out[:, :num_image], out[:, num_image:]
            if not attn.context_pre_only:
                text_out = attn.to_add_out(text_out)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, text_out) if encoder_hidden_states is not None else out

    def _flux(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, call, qk_ctrl, v_ctrl, probs_ctrl):
        """diffusers' ``FluxAttnProcessor`` (native backend) step by step, with the controllers in between."""
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))  # [B, N, H, d]
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        joint = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if joint:
            if getattr(attn, "fused_projections", False) and hasattr(attn, "to_added_qkv"):
                eq, ek, ev = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
            else:
                eq = attn.add_q_proj(encoder_hidden_states)
                ek = attn.add_k_proj(encoder_hidden_states)
                ev = attn.add_v_proj(encoder_hidden_states)
            eq = attn.norm_added_q(eq.unflatten(-1, (-1, attn.head_dim)))
            ek = attn.norm_added_k(ek.unflatten(-1, (-1, attn.head_dim)))
            ev = ev.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([eq, query], dim=1)  # [B, T + N, H, d]: text first
            key = torch.cat([ek, key], dim=1)
            value = torch.cat([ev, value], dim=1)
        if rotary is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query = apply_rotary_emb(query, rotary, sequence_dim=1)
            key = apply_rotary_emb(key, rotary, sequence_dim=1)

        q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))  # [B, H, L, d], as diffusers' native backend
        out = self._edit_and_attend(attn, q, k, v, attention_mask, call, qk_ctrl, v_ctrl, probs_ctrl)
        out = out.permute(0, 2, 1, 3).flatten(2, 3).to(query.dtype)
        if not joint:
            return out  # single-stream: the block applies its own output projection
        num_text = encoder_hidden_states.shape[1]
        text_out, out = out.split_with_sizes([num_text, out.shape[1] - num_text], dim=1)
        out = attn.to_out[1](attn.to_out[0](out.contiguous()))
        return out, attn.to_add_out(text_out.contiguous())

    def _attend(self, attn, query, key, value, attention_mask, call, probs_ctrl):
        """Attention of ``[B, H, N, d]`` queries: fused unless a controller needs the probabilities."""
        if probs_ctrl and call.layout.cfg and all(c.cond_rows_only for c in probs_ctrl):
            # The controllers read and edit only the conditional rows: the unconditional half keeps the
            # fused kernel, and the controllers see the conditional half as a batch without guidance.
            unc, cond = call.layout.uncond, call.layout.cond
            mask_u = mask_c = None
            if attention_mask is not None:
                mask_u, mask_c = attention_mask[unc], attention_mask[cond]
            cond_call = dataclasses.replace(call, layout=BatchLayout(call.layout.num_prompts, cfg=False))
            return torch.cat([
                _sdpa(query[unc], key[unc], value[unc], mask_u),
                self._materialise(attn, query[cond], key[cond], value[cond], mask_c, probs_ctrl, cond_call),
            ])
        if probs_ctrl:
            return self._materialise(attn, query, key, value, attention_mask, probs_ctrl, call)
        return _sdpa(query, key, value, attention_mask)  # only Q/K/V edits: keep the fused kernel

    def _materialise(self, attn, query, key, value, attention_mask, probs_ctrl, call):
        """softmax(Q K^T / sqrt(d)) explicitly, edited by the controllers, applied to V: ``[b, H, N, d]``."""
        scale = getattr(attn, "scale", None) or query.shape[-1] ** -0.5
        scores = torch.matmul(query * scale, key.transpose(-1, -2))  # [b, H, N, M]
        if attention_mask is not None:
            scores = scores + attention_mask
        if getattr(attn, "upcast_softmax", False) or getattr(attn, "upcast_attention", False):
            scores = scores.float()
        probs = scores.softmax(dim=-1).to(value.dtype)
        for controller in probs_ctrl:
            probs = controller.on_probs(probs, call)
        self.session.materialised.add(self.layer.name)
        return torch.matmul(probs, value)


def _sdpa(query, key, value, attention_mask):
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
    )


@contextlib.contextmanager
def hooked(unet, controllers: Controller | Sequence[Controller] = ()) -> Iterator[HookSession]:
    """Install :class:`HookProcessor` on every attention layer of ``unet`` for the duration of the block.

    ``unet`` may also be an SD3 / FLUX.1 transformer (``pipe.transformer``); the sampling loop then gives
    :meth:`HookSession.begin` the unpacked latent size ``(H / 8, W / 8)``.

    Yields the :class:`HookSession` the sampling loop drives (``begin``, ``set_step``, ``step_end``). The
    previous processors are restored on exit, also when the block raises.

    Raises:
        HookError: the UNet has no attention layer to hook.
    """
    if isinstance(controllers, Controller):
        controllers = [controllers]
    previous = dict(unet.attn_processors)
    if not previous:
        raise HookError(f"{type(unet).__name__} has no attention layers: nothing to hook")
    layers = describe_layers(unet)
    session = HookSession(layers=layers, controllers=list(controllers))
    for controller in session.controllers:
        controller.reset()
    unet.set_attn_processor({name: HookProcessor(layers[name], session, previous[name]) for name in previous})
    try:
        yield session
    finally:
        unet.set_attn_processor(previous)
