"""Prompt-to-Prompt on a real image: invert it (:mod:`editkit.inversion`), then edit (:mod:`editkit.p2p`).

The source row starts from the inverted noise and, through the inversion's conditioning, reconstructs the
image; the target rows are edited as in :func:`editkit.p2p.generate`. What each inversion method adds to the
sampling loop (numbers refer to the equations in :mod:`editkit.inversion`):

* ``"null-text"``: the optimised ∅_t of every step (4);
* ``"negative-prompt"``: ∅ := C of the source prompt (5);
* ``"direct"``: after every step, the source row is put back onto the inversion trajectory (6), *before*
  the controllers' step callback (local blend), as PnPInversion's ``direct_inversion_p2p_guidance_forward``
  does, so that a local blend copies the corrected source outside its mask;
* ``"ddim"``: nothing (guided sampling drifts from the image; kept as the baseline).

Self-attention rule: real-image edits replace self-attention in layers whose feature map is at most
latent / 2 per side (``REAL_IMAGE_SELF_REPLACE_MIN_FACTOR``, 32x32 at 512 px: ``att_replace.shape[2] <= 32 ** 2``
in google/prompt-to-prompt's ``null_text_w_ptp.ipynb`` and in PnPInversion's P2P code, which produced the
published null-text and PnPInversion results), where the text-to-image notebook
(``prompt-to-prompt_stable.ipynb``, ``<= 16 ** 2``) and :func:`editkit.p2p.generate` use latent / 4
(:data:`editkit.p2p.controllers.SELF_REPLACE_MIN_FACTOR`). ``self_replace_min_factor`` chooses.
"""

from __future__ import annotations

import torch

from .inversion import METHODS, Inversion, check_inversion, check_method, invert, start_latents
from .p2p import generate
from .p2p.controllers import REAL_IMAGE_SELF_REPLACE_MIN_FACTOR
from .sampling import start_step

__all__ = ["METHODS", "REAL_IMAGE_SELF_REPLACE_MIN_FACTOR", "edit_image"]


def edit_image(
    pipe,
    image_or_inversion,
    source_prompt: str,
    target_prompts,
    edit=None,
    local_blend=None,
    inversion: str = "null-text",
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
    return_inversion: bool = False,
    *,
    return_attention: bool | str = False,
    progress: bool = True,
    self_replace_min_factor: int = REAL_IMAGE_SELF_REPLACE_MIN_FACTOR,
    strength: float = 1.0,
    init_latent: torch.Tensor | None = None,
    **invert_kwargs,
):
    """Prompt-to-Prompt on a real image: invert it (or reuse an :class:`Inversion`), then edit.

    The source row starts from the inverted noise and, through the inversion's conditioning, reconstructs
    the image; the target rows are edited by ``edit`` / ``local_blend`` exactly as in
    :func:`editkit.p2p.generate` (swap, refine, reweight, local blend all work). Pass the returned
    ``result.inversion`` (``return_inversion=True``) back in to make several edits from one inversion.

    Args:
        image_or_inversion: a path, a PIL image or an :class:`Inversion` (then ``inversion``,
            ``num_inference_steps`` and ``guidance_scale`` come from it, and ``source_prompt`` must be the
            prompt it was inverted with).
        inversion: the method when an image is given (see :data:`METHODS`).
        self_replace_min_factor: self-attention is replaced in layers at most latent / this per side during
            the edit's ``self_replace_steps``: 2 (default, the real-image rule of the null-text and
            PnPInversion code, 32x32 at 512 px) or 4 (the text-to-image notebook's rule, 16x16 at 512 px).
        return_attention: as in :func:`editkit.p2p.generate`.
        strength: run only the last ``int(T * strength)`` of the ``T`` steps (image-to-image, as diffusers'
            img2img counts it), starting from the inversion's latents at that step (1: all steps).
        init_latent: an image latent ``[1, C, h, w]`` the target rows start from instead of the image's own
            (see :func:`editkit.inversion.start_latents`): the edit is then made of ``init_latent`` while
            the source row still reconstructs the inverted image and lends it its attention. Used by
            :mod:`splat.edit` to edit a render of a scene under the attention of the view's photo.
        generator: unused by the deterministic inversions; accepted for API symmetry with ``generate``.
        invert_kwargs: passed to :func:`invert` (``num_inner_steps``, ``size``, ...).

    Returns:
        :class:`editkit.p2p.P2PResult`, with ``.inversion`` set when ``return_inversion=True``.
    """
    # 1. Inversion (or reuse one); the strength is checked first, before an inversion is paid for
    if not isinstance(target_prompts, str):
        target_prompts = list(target_prompts)
    given = image_or_inversion
    start_step(given.num_inference_steps if isinstance(given, Inversion) else num_inference_steps, strength)
    if isinstance(image_or_inversion, Inversion):
        inv = image_or_inversion
        check_inversion(pipe, inv)
        if inv.prompt != source_prompt:
            raise ValueError(
                f"the inversion was made with the prompt {inv.prompt!r}, not the source prompt {source_prompt!r}; "
                "invert again with this source prompt"
            )
    else:
        check_method(inversion)
        inv = invert(
            pipe,
            image_or_inversion,
            source_prompt,
            inversion,
            num_inference_steps,
            guidance_scale,
            progress=progress,
            **invert_kwargs,
        )
    device = pipe._execution_device
    h, w = inv.latents.shape[-2:]
    first_step = start_step(inv.num_inference_steps, strength)
    if first_step == 0 and init_latent is None:
        latents = inv.noise  # one row, shared by every prompt
    else:
        n_targets = 1 if isinstance(target_prompts, str) else len(target_prompts)
        latents = start_latents(pipe, inv, first_step, n_targets, init_latent)

    # 2. The inversion's conditioning: ∅_t (null-text), ∅ := C_src (negative prompt, 5), source row put back
    #    on the pivot (Direct Inversion, 6)
    uncond = None
    if inv.method == "null-text":
        uncond = inv.uncond_list(device, pipe.unet.dtype)
    # negative-prompt (5): ∅ := C_src is the source prompt used as the negative prompt, which also carries
    # SDXL's pooled embedding through the pipeline's own encoder
    negative_prompt = inv.prompt if inv.method == "negative-prompt" else None
    callback = None
    if inv.method == "direct":

        def callback(i, latents):
            latents = latents.clone()
            latents[0] = inv.latent_at(i)[0].to(device=latents.device, dtype=latents.dtype)
            return latents

    # 3. Prompt-to-Prompt from the inverted noise
    result = generate(
        pipe,
        source_prompt,
        target_prompts,
        edit=edit,
        local_blend=local_blend,
        num_inference_steps=inv.num_inference_steps,
        guidance_scale=inv.guidance_scale,
        latents=latents.to(device=device, dtype=pipe.unet.dtype),
        height=h * pipe.vae_scale_factor,
        width=w * pipe.vae_scale_factor,
        return_attention=return_attention,
        progress=progress,
        uncond_embeddings=uncond,
        negative_prompt=negative_prompt,
        step_callback=callback,
        self_replace_min_factor=self_replace_min_factor,
        first_step=first_step,
    )
    if return_inversion:
        result.inversion = inv
    return result
