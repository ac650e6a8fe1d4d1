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

Notation in this module::

    B      rows in the UNet batch (2 * num_prompts with classifier-free guidance, else num_prompts)
    H      attention heads of the layer
    N      query tokens = h * w pixels of the layer's feature map
    M      key tokens = N (self-attention) or the text length, 77 for CLIP (cross-attention)
    d      head dimension
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


class HookError(RuntimeError):
    """The hook layer could not be installed or used as asked."""


@dataclass(frozen=True)
class LayerInfo:
    """Where an attention layer sits in the UNet, derived from its name and the UNet config."""

    name: str  # processor key, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    place: str  # "down" | "mid" | "up"
    block: int  # index of the down/up block (0 for mid)
    is_cross: bool  # attn2 in a transformer block: keys and values come from the text encoder
    factor: int  # the layer's feature map is the latent downsampled `factor` times (1, 2, 4, ...)

    def resolution(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Feature-map size of this layer for a latent of size ``latent_hw``.

        Each diffusers downsampler is a 3x3 stride-2 convolution with padding 1, i.e. ``ceil(x / 2)``.
        """
        h, w = latent_hw
        for _ in range(int(math.log2(self.factor))):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w


def describe_layers(unet) -> dict[str, LayerInfo]:
    """Map every attention processor name of ``unet`` to its :class:`LayerInfo`.

    The downsampling factor of ``down_blocks.i`` is ``2**i`` (every down block but the last halves the
    resolution at its end), of the mid block ``2**(n-1)``, and of ``up_blocks.i`` ``2**(n-1-i)``, with
    ``n = len(unet.config.down_block_types)``. This holds for SD 1.x, 2.x and SDXL alike.
    """
    n = len(unet.config.down_block_types)
    out: dict[str, LayerInfo] = {}
    for name in unet.attn_processors:
        m = _NAME.match(name)
        if m is None:
            raise HookError(
                f"cannot place attention layer {name!r}: editkit hooks UNet2DConditionModel-style UNets "
                "(down_blocks / mid_block / up_blocks)"
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
    timestep: int | None
    layout: BatchLayout
    resolution: tuple[int, int]  # (h, w) of the layer's feature map
    latent_hw: tuple[int, int]


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

    def on_qk(self, query: torch.Tensor, key: torch.Tensor, call: AttentionCall):
        """``query: [B, H, N, d]``, ``key: [B, H, M, d]``; return the pair to attend with."""
        return query, key

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
    timestep: int | None = None
    materialised: set[str] = field(default_factory=set)  # layers that computed probabilities at least once

    def begin(self, layout: BatchLayout, latent_hw: tuple[int, int], num_steps: int) -> None:
        """Start a run: the sampling loop calls this before its first UNet call."""
        self.layout = layout
        self.latent_hw = tuple(latent_hw)
        self.num_steps = num_steps
        self.step = 0
        self.timestep = None

    def set_step(self, step: int, timestep=None) -> None:
        self.step = int(step)
        self.timestep = None if timestep is None else int(timestep)

    def step_end(self, latents: torch.Tensor) -> torch.Tensor:
        for controller in self.controllers:
            latents = controller.on_step_end(latents, self)
        return latents

    def call_for(self, layer: LayerInfo, num_tokens: int) -> AttentionCall | None:
        if self.layout is None or self.latent_hw is None:
            return None  # not inside an editkit sampling loop: behave like the original processor
        h, w = layer.resolution(self.latent_hw)
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
        session = self.session
        num_tokens = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        call = session.call_for(self.layer, num_tokens)
        qk_ctrl = probs_ctrl = ()
        if call is not None:
            qk_ctrl = [c for c in session.controllers if c.wants_qk(call)]
            probs_ctrl = [c for c in session.controllers if c.wants_probs(call)]
        if not qk_ctrl and not probs_ctrl:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self._explicit(attn, hidden_states, encoder_hidden_states, attention_mask, temb, call, qk_ctrl, probs_ctrl)

    def _explicit(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, call, qk_ctrl, probs_ctrl):
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

        if probs_ctrl and call.layout.cfg and all(c.cond_rows_only for c in probs_ctrl):
            # The controllers read and edit only the conditional rows: the unconditional half keeps the
            # fused kernel, and the controllers see the conditional half as a batch without guidance.
            unc, cond = call.layout.uncond, call.layout.cond
            mask_u = mask_c = None
            if attention_mask is not None:
                mask_u, mask_c = attention_mask[unc], attention_mask[cond]
            cond_call = dataclasses.replace(call, layout=BatchLayout(call.layout.num_prompts, cfg=False))
            hidden_states = torch.cat([
                _sdpa(query[unc], key[unc], value[unc], mask_u),
                self._materialise(attn, query[cond], key[cond], value[cond], mask_c, probs_ctrl, cond_call),
            ])
        elif probs_ctrl:
            hidden_states = self._materialise(attn, query, key, value, attention_mask, probs_ctrl, call)
        else:  # only Q/K edits: keep the fused kernel
            hidden_states = _sdpa(query, key, value, attention_mask)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


    def _materialise(self, attn, query, key, value, attention_mask, probs_ctrl, call):
        """softmax(Q K^T / sqrt(d)) explicitly, edited by the controllers, applied to V: ``[b, H, N, d]``."""
        scores = torch.matmul(query * attn.scale, key.transpose(-1, -2))  # [b, H, N, M]
        if attention_mask is not None:
            scores = scores + attention_mask
        if attn.upcast_softmax or attn.upcast_attention:
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
