"""Plug-and-Play diffusion features (Tumanyan et al., CVPR 2023) on a DDIM-inverted real image.

The image is DDIM-inverted with the source ("inversion") prompt, ``""`` by default (:func:`editkit.invert`
with ``method="ddim"``; the whole trajectory stays in memory, where the reference pnp-diffusers writes one
file per timestep). Sampling with the target prompt then runs one extra batch row, the source: at step
``i`` it holds the inverted latent of that step and the source prompt's embedding, and its features replace
the target rows' (reference ``pnp.py``: batch ``[source, uncond, cond]``):

* **features**: the residual-branch output of one decoder ResBlock, for the first ``int(T * pnp_f_t)``
  steps (default 0.8). As in the reference (``register_conv_control_efficient``) only the residual branch is
  replaced (the output of the block's ``conv2``, before the skip connection is added), so the forward hook
  sits on that ResBlock's ``conv2`` module;
* **self-attention queries and keys** of the decoder's self-attention layers, for the first
  ``int(T * pnp_attn_t)`` steps (default 0.5), through the hook layer (a :class:`~editkit.hooks.Controller`
  with ``wants_qk``); the values stay the target's.

Injection points, derived from the UNet's structure. Let ``k`` be the index of the lowest-resolution decoder
block that has attention (``up_blocks[k].attentions`` exists):

* feature ResBlock: ``up_blocks[k].resnets[1]``;
* Q/K: every self-attention layer (``attn1``, all transformer blocks) of ``up_blocks[k:]``, except those of
  ``up_blocks[k].attentions[0]``.

==========  ===  ==========================  ==============================================================
model       k    feature ResBlock            self-attention Q/K
==========  ===  ==========================  ==============================================================
SD 1.x      1    up_blocks.1.resnets.1       up_blocks.1.attentions.1-2, up_blocks.2-3.attentions.0-2
SD 2.x      1    up_blocks.1.resnets.1       same as SD 1.x (the reference's 2.0 / 2.1 setting)
SDXL        0    up_blocks.0.resnets.1       up_blocks.0.attentions.1-2 (10 transformer blocks each),
                                             up_blocks.1.attentions.0-2
==========  ===  ==========================  ==============================================================

For SD 1.x/2.x this is exactly the reference (``up_blocks[1].resnets[1]``; ``res_dict = {1: [1, 2],
2: [0, 1, 2], 3: [0, 1, 2]}``, "blocks 4-11 of the decoder"). SDXL has no reference; the rule picks the
same relative place (the coarsest decoder level with attention, 32x32 at 1024 px).

Sampling defaults follow the reference's ``config_pnp.yaml``: 50 steps, guidance 7.5, ``pnp_f_t=0.8``,
``pnp_attn_t=0.5``, negative prompt ``"ugly, blurry, black, low res, unrealistic"``.

Inversion: **not** the reference's by default. pnp-diffusers' ``preprocess.py`` inverts with 999 DDIM steps
(``--steps 999``: every timestep 1..999) and saves the latent at each; sampling then starts from the latent
at the first of its 50 timesteps (981) and reads the source row's latent at each of them. Here the default
inverts with the sampling's own 50 steps (``inversion_steps=None``), 20x cheaper; ``inversion_steps=999``
reproduces the reference: the same fine inversion, the latents kept at the 50 sampling timesteps, and
sampling starting from the latent at timestep 981 exactly as the reference does. (Measured on the tiny test
model: see ``benchmarks/bench_real_edit.py --pnp-inversion``.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from PIL import Image
from tqdm.auto import tqdm

from .hooks import AttentionCall, BatchLayout, Controller, describe_layers, hooked
from .inversion import Inversion, check_inversion, invert, start_latents
from .progress import PNP
from .progress import report as progress_report
from .sampling import check_guidance, check_steps, decode_latents, encode_prompts, start_step

DEFAULT_NEGATIVE_PROMPT = "ugly, blurry, black, low res, unrealistic"

__all__ = ["DEFAULT_NEGATIVE_PROMPT", "PnPLayers", "PnPResult", "injection_layers", "pnp_edit"]

_ATTN = re.compile(r"^up_blocks\.(?P<block>\d+)\.attentions\.(?P<attn>\d+)\.")


@dataclass(frozen=True)
class PnPLayers:
    """Where Plug-and-Play injects, for one UNet."""

    feature_block: str  # module name of the ResBlock, e.g. "up_blocks.1.resnets.1"
    attention: tuple[str, ...]  # processor names of the self-attention layers


def injection_layers(unet) -> PnPLayers:
    """The injection points of ``unet`` (see the module docstring for the rule and the SD 1.x/2.x/SDXL table)."""
    with_attention = [i for i, block in enumerate(unet.up_blocks) if len(getattr(block, "attentions", None) or ()) > 0]
    if not with_attention:
        raise ValueError("Plug-and-Play needs a UNet whose decoder has attention layers")
    k = with_attention[0]
    if len(unet.up_blocks[k].resnets) < 2:
        raise ValueError(f"Plug-and-Play injects into up_blocks[{k}].resnets[1], but that block has one ResBlock")
    attention = []
    for name, layer in describe_layers(unet).items():
        m = _ATTN.match(name)
        if layer.place != "up" or layer.is_cross or m is None:
            continue
        block, attn = int(m["block"]), int(m["attn"])
        if block > k or (block == k and attn > 0):
            attention.append(name)
    return PnPLayers(feature_block=f"up_blocks.{k}.resnets.1", attention=tuple(attention))


def check_threshold(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction of the steps in [0, 1], got {value!r}")
    return float(value)


class QKInjection(Controller):
    """Replace the target rows' self-attention queries and keys by the source row's (row 0).

    The batch is ``[source, layout rows...]``: the source row is prepended to the rows the
    :class:`~editkit.hooks.BatchLayout` describes, while ``call.step < num_steps``.
    """

    def __init__(self, layers, num_steps: int):
        self.layers = frozenset(layers)
        self.num_steps = num_steps

    def wants_qk(self, call: AttentionCall) -> bool:
        return call.step < self.num_steps and call.layer.name in self.layers

    def on_qk(self, query, key, call):
        # query [1 + B, H, N, d], key [1 + B, H, N, d]: row 0 is the source
        rows = query.shape[0]
        query = torch.cat([query[:1], query[:1].expand(rows - 1, *query.shape[1:])])
        key = torch.cat([key[:1], key[:1].expand(rows - 1, *key.shape[1:])])
        return query, key


@dataclass
class PnPResult:
    """Output of :func:`pnp_edit`."""

    images: list[Image.Image]  # one edited image per target prompt
    source: Image.Image  # the input image as the model sees it (VAE round trip of z_0)
    latents: torch.Tensor  # [P, C, h, w] final latents of the targets
    prompts: list[str]
    inversion: Inversion | None = field(default=None, repr=False)  # when return_inversion=True

    @property
    def image(self) -> Image.Image:
        return self.images[0]

    @property
    def targets(self) -> list[Image.Image]:
        return self.images


@torch.no_grad()
def pnp_edit(
    pipe,
    image_or_inversion,
    target_prompt: str | list[str],
    *,
    source_prompt: str = "",
    pnp_f_t: float = 0.8,
    pnp_attn_t: float = 0.5,
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
    return_inversion: bool = False,
    progress: bool = True,
    output_type: str = "pil",
    size: int | tuple[int, int] | None = None,
    keep_aspect: bool = False,
    inversion_steps: int | None = None,
    strength: float = 1.0,
    init_latent: torch.Tensor | None = None,
) -> PnPResult:
    """Edit a real image into ``target_prompt`` with Plug-and-Play feature and self-attention injection.

    Args:
        pipe: a Stable Diffusion 1.x/2.x or SDXL pipeline with a DDIM scheduler.
        image_or_inversion: a path, a PIL image, or an :class:`~editkit.inversion.Inversion` from a
            previous call (``return_inversion=True``); its prompt then is the source prompt and its step
            count the number of steps.
        target_prompt: the edit, or a list of them (each its own rows, all sharing the source row).
        source_prompt: the inversion prompt (``""``, as the reference).
        pnp_f_t: fraction of the steps with feature injection, in ``[0, 1]`` (0.8).
        pnp_attn_t: fraction of the steps with self-attention Q/K injection, in ``[0, 1]`` (0.5).
        negative_prompt: the unconditional prompt of the target rows.
        num_inference_steps, guidance_scale: DDIM steps (50) and guidance (7.5).
        generator: unused (everything is deterministic from the inversion); accepted for API symmetry.
        return_inversion: attach the inversion to the result, to make more edits from it.
        progress: show progress bars.
        size, keep_aspect: how an image is fitted to the model (see :func:`editkit.image.load_image`).
        inversion_steps: DDIM inversion steps when an image is given: ``None`` (default) inverts with
            ``num_inference_steps``; ``999`` is the reference's (pnp-diffusers ``preprocess.py``), about
            20x the inversion time.
        strength: run only the last ``int(T * strength)`` of the ``T`` steps (image-to-image), from the
            inversion's latents at that step (1: all steps, the reference).
        init_latent: an image latent ``[1, C, h, w]`` the target rows start from instead of the image's own
            (see :func:`editkit.inversion.start_latents`); the source row (the injected features) is still
            the inverted image's.

    Examples:
        >>> res = pnp_edit(pipe, "horse.jpg", "a photo of a pink toy horse on the beach", return_inversion=True)
        >>> res.image.save("toy.png")
        >>> res2 = pnp_edit(pipe, res.inversion, "a watercolor painting of a horse")
    """
    # 1. Check inputs
    pnp_f_t = check_threshold("pnp_f_t", pnp_f_t)
    pnp_attn_t = check_threshold("pnp_attn_t", pnp_attn_t)
    targets = [target_prompt] if isinstance(target_prompt, str) else list(target_prompt)
    if not targets or any(not isinstance(p, str) for p in targets):
        raise ValueError(f"target_prompt must be a string or a list of strings, got {target_prompt!r}")
    guidance_scale = check_guidance(guidance_scale)
    given = image_or_inversion
    start_step(given.num_inference_steps if isinstance(given, Inversion) else num_inference_steps, strength)

    # 2. DDIM inversion with the source prompt (or reuse one)
    if isinstance(image_or_inversion, Inversion):
        inv = image_or_inversion
        check_inversion(pipe, inv)
        if source_prompt and source_prompt != inv.prompt:
            raise ValueError(f"the inversion was made with the prompt {inv.prompt!r}, not {source_prompt!r}")
        source_prompt = inv.prompt
    else:
        check_steps(num_inference_steps)
        inv = invert(pipe, image_or_inversion, source_prompt, "ddim", num_inference_steps, guidance_scale,
                     size=size, keep_aspect=keep_aspect, progress=progress, inversion_steps=inversion_steps)
    T = inv.num_inference_steps
    device, dtype = pipe._execution_device, pipe.unet.dtype
    latent_hw = tuple(inv.latents.shape[-2:])
    height, width = latent_hw[0] * pipe.vae_scale_factor, latent_hw[1] * pipe.vae_scale_factor

    # 3. Injection schedule and points (reference: timesteps[:int(T * pnp_f_t)])
    feature_steps, qk_steps = int(T * pnp_f_t), int(T * pnp_attn_t)
    source_steps = max(feature_steps, qk_steps)  # steps that need the source row at all
    layers = injection_layers(pipe.unet)

    # 4. Text embeddings: targets with the negative prompt, the source row with the source prompt
    cond = encode_prompts(pipe, targets, negative_prompt, height, width)
    src = encode_prompts(pipe, [source_prompt], None, height, width)
    cfg = guidance_scale > 1.0
    layout = BatchLayout(len(targets), cfg)

    # 5. Denoising loop: batch [source, *layout rows] while injecting, [*layout rows] after
    scheduler = pipe.scheduler
    scheduler.set_timesteps(T, device=device)
    pivots = inv.latents.to(device=device, dtype=dtype)  # [T + 1, C, h, w]
    first_step = start_step(T, strength)
    if first_step == 0 and init_latent is None:
        x = pivots[T:].expand(len(targets), -1, -1, -1).clone()  # [P, C, h, w] from z*_T
    else:  # image-to-image: from the latents at step first_step (the rows after the source's)
        x = start_latents(pipe, inv, first_step, len(targets), init_latent)[1:].to(device=device, dtype=dtype)
    state = {"step": 0}

    def inject_features(module, args, output):  # output [1 + B, C', h', w'] of the ResBlock's conv2
        if state["step"] < feature_steps and output.shape[0] == layout.batch_size + 1:
            output = torch.cat([output[:1], output[:1].expand(output.shape[0] - 1, *output.shape[1:])])
        return output

    feature_module = pipe.unet.get_submodule(layers.feature_block).conv2
    handle = feature_module.register_forward_hook(inject_features)
    try:
        with hooked(pipe.unet, QKInjection(layers.attention, qk_steps)) as session:
            session.begin(layout, latent_hw, T)
            steps = tqdm(scheduler.timesteps[first_step:], disable=not progress, desc="Plug-and-Play", leave=False)
            for i, t in enumerate(steps, start=first_step):
                state["step"] = i
                session.set_step(i, t)
                model_in = torch.cat([x] * 2) if cfg else x
                embeds = cond.encoder_hidden_states(i, cfg)
                added = cond.added_cond_kwargs(cfg)
                with_source = i < source_steps
                if with_source:  # the source row: z*_t of this step with the source prompt
                    model_in = torch.cat([pivots[T - i][None], model_in])
                    embeds = torch.cat([src.cond, embeds])
                    if added is not None:
                        added = {k: torch.cat([src.cond_added[k], v]) for k, v in added.items()}
                model_in = scheduler.scale_model_input(model_in, t)
                out = pipe.unet(model_in, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]
                if with_source:
                    out = out[1:]
                if cfg:
                    uncond, text = out.chunk(2)
                    out = uncond + guidance_scale * (text - uncond)
                x = scheduler.step(out, t, x, return_dict=False)[0]
                progress_report(PNP, i + 1 - first_step, T - first_step)
    finally:
        handle.remove()

    # 6. Decode
    images = decode_latents(pipe, x, output_type=output_type)
    source_image = decode_latents(pipe, inv.z0.to(device=device, dtype=dtype), output_type=output_type)[0]
    return PnPResult(list(images), source_image, x, targets, inv if return_inversion else None)
