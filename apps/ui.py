"""The editing UI: a Gradio app over editkit's Prompt-to-Prompt, inversion and Plug-and-Play.

Three tabs, one per way of editing:

* **Generate & edit**: generate an image from a source prompt and edit it with Prompt-to-Prompt.
* **Edit a photo (P2P)**: invert an uploaded photo (null-text, negative-prompt, DDIM or direct inversion) and
  edit it with Prompt-to-Prompt.
* **Edit a photo (PnP)**: edit an uploaded photo with Plug-and-Play.

The model is loaded once, when the app is built, and shared by every browser session; runs are serialised
(one concurrency group of size 1, plus a lock) because editing installs attention hooks on the shared UNet.
Everything else that changes while a user works (the inversion cache) lives in ``gr.State``, which Gradio keeps
per browser session, so two users never see each other's inversions or results.

Run it with ``editkit ui --model PATH_OR_HUB_ID`` or ``python -m apps.ui --model ...``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .editing import (
    INVERSION_METHODS,
    InputError,
    InversionCache,
    Outcome,
    P2PSettings,
    parse_reweight,
    words_of,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
REWEIGHT_ROWS = 3  # word + strength rows offered for attention re-weighting
RUN_GROUP = "editkit-pipeline"  # every run event shares this concurrency group (size 1)


@dataclass
class LoadedModel:
    """The pipeline of this app (or why there is none), loaded once when the app is built."""

    name: str
    pipe: object | None = None
    error: str | None = None
    lock: threading.Lock = None

    @classmethod
    def load(cls, model, device=None, dtype=None) -> LoadedModel:
        from editkit import ModelNotFoundError, load_pipeline

        name = model if isinstance(model, str) else type(model).__name__
        try:
            pipe = load_pipeline(model, device=device, dtype=dtype)
        except (ModelNotFoundError, TypeError) as e:
            return cls(name=str(name), error=str(e), lock=threading.Lock())
        return cls(name=str(name), pipe=pipe, lock=threading.Lock())

    def describe(self) -> str:
        if self.pipe is None:
            return f"**No model loaded.** `{self.name}` could not be loaded:\n\n```\n{self.error}\n```"
        device = self.pipe.device
        dtype = str(self.pipe.unet.dtype).replace("torch.", "")
        return f"Model: `{self.name}` ({type(self.pipe).__name__}) on **{device}** in **{dtype}**."


def _status_ok(outcome: Outcome, seconds: float) -> str:
    msg = f"Done in {seconds:.1f} s."
    if outcome.inversion_reused is True:
        msg += " Inversion reused (same photo and inversion settings)."
    elif outcome.inversion_reused is False:
        msg += " Inversion computed and kept for this session."
    return msg + "".join(f" {n}" for n in outcome.notes)


def _status_error(message: str) -> str:
    return f"**Could not edit:** {message}"


def _save_outputs(outcome: Outcome, labels: list[str]) -> list[str]:
    """Write the images of one run to a fresh temporary folder, for the download box."""
    folder = Path(tempfile.mkdtemp(prefix="editkit-ui-"))
    paths = []
    for label, image in zip(labels, [outcome.source, *outcome.targets], strict=True):
        paths.append(folder / f"{label.replace(' ', '_')}.png")
        image.save(paths[-1])
    for k, (_, image) in enumerate(outcome.heatmaps):
        paths.append(folder / f"heatmap_{k}.png")
        image.save(paths[-1])
    return [str(p) for p in paths]


def stack_heatmaps(heatmaps):
    """All prompts' token grids in one image, one captioned row per prompt (wide grids fit an image box)."""
    from PIL import Image, ImageDraw

    if not heatmaps:
        return None
    bar = 18
    width = max(img.width for _, img in heatmaps)
    canvas = Image.new("RGB", (width, sum(img.height + bar for _, img in heatmaps)), "white")
    draw, y = ImageDraw.Draw(canvas), 0
    for caption, img in heatmaps:
        draw.text((4, y + 3), caption, fill="black")
        canvas.paste(img.convert("RGB"), (0, y + bar))
        y += img.height + bar
    return canvas


def _result_gallery(outcome: Outcome, target_prompts: list[str]):
    items = [(outcome.source, "source")]
    items += [(img, f"edited: {t}") for img, t in zip(outcome.targets, target_prompts, strict=False)]
    return items


def _targets(text: str) -> list[str]:
    """One target prompt per line."""
    return [t.strip() for t in (text or "").splitlines() if t.strip()]


def build_app(model=DEFAULT_MODEL, *, device=None, dtype=None, default_steps: int = 50, title: str = "editkit"):
    """Build the editing UI (a ``gr.Blocks``); the model is loaded here, once.

    Args:
        model: a hub id, a local diffusers folder, a single checkpoint file, or a loaded pipeline.
        device: default CUDA when available, else CPU.
        dtype: default fp16 on CUDA, fp32 on CPU.
        default_steps: initial value of the steps sliders.
    """
    import gradio as gr

    loaded = LoadedModel.load(model, device=device, dtype=dtype)

    def guarded(run, n_outputs: int):
        """Run an edit under the model lock; turn every failure into a status message (the app keeps going)."""

        def wrapper(*args, progress=gr.Progress(track_tqdm=True)):
            if loaded.pipe is None:
                return (_status_error(f"no model is loaded.\n\n```\n{loaded.error}\n```"),) + (None,) * n_outputs
            start = time.perf_counter()
            try:
                with loaded.lock:
                    progress(0, desc="Starting")
                    outcome, prompts = run(*args)
            except InputError as e:
                gr.Warning(str(e))
                return (_status_error(str(e)),) + (None,) * n_outputs
            except Exception as e:  # noqa: BLE001 - the page must survive any failure and say what happened
                log.exception("edit failed")
                return (_status_error(f"{type(e).__name__}: {e}"),) + (None,) * n_outputs
            labels = ["source"] + [f"target_{k}" for k in range(len(outcome.targets))]
            status = _status_ok(outcome, time.perf_counter() - start)
            heatmaps = stack_heatmaps(outcome.heatmaps)
            files = _save_outputs(outcome, labels)
            if n_outputs == 3:
                return status, _result_gallery(outcome, prompts), heatmaps, files
            return status, _result_gallery(outcome, prompts), files

        return wrapper

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}: training-free image editing")
        gr.Markdown(loaded.describe(), elem_id="model-info")
        sessions_cache = gr.State(InversionCache())

        with gr.Tabs():
            # ---------------------------------------------------------------- generate & edit (P2P)
            with gr.Tab("Generate & edit (P2P)", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        g_source = gr.Textbox(label="Source prompt", value="a photo of a cat riding a bicycle",
                                              elem_id="gen-source")
                        g_target = gr.Textbox(label="Target prompt(s), one per line",
                                              value="a photo of a dog riding a bicycle", lines=2,
                                              elem_id="gen-target")
                        g_p2p = _p2p_controls(gr, "gen")
                        g_sampling = _sampling_controls(gr, "gen", default_steps)
                        g_run = gr.Button("Generate and edit", variant="primary", elem_id="gen-run")
                    with gr.Column(scale=2):
                        g_out = _outputs(gr, "gen", heatmaps=True)

            # ---------------------------------------------------------------- photo, P2P
            with gr.Tab("Edit a photo (P2P)", id="photo-p2p"):
                with gr.Row():
                    with gr.Column(scale=1):
                        p_image = gr.Image(label="Photo", type="pil", sources=["upload", "clipboard"],
                                           elem_id="p2p-image")
                        p_source = gr.Textbox(label="Source prompt (describes the photo)",
                                              placeholder="a cat sitting on a table", elem_id="p2p-source")
                        p_target = gr.Textbox(label="Target prompt(s), one per line", lines=2,
                                              placeholder="a dog sitting on a table", elem_id="p2p-target")
                        p_inversion = gr.Radio(list(INVERSION_METHODS), value="null-text", label="Inversion",
                                               info="null-text: most faithful, slowest; negative-prompt and "
                                               "direct: fast; ddim: plain DDIM inversion",
                                               elem_id="p2p-inversion")
                        p_p2p = _p2p_controls(gr, "p2p")
                        p_sampling = _sampling_controls(gr, "p2p", default_steps)
                        p_run = gr.Button("Edit photo", variant="primary", elem_id="p2p-run")
                    with gr.Column(scale=2):
                        p_out = _outputs(gr, "p2p", heatmaps=True)

            # ---------------------------------------------------------------- photo, PnP
            with gr.Tab("Edit a photo (PnP)", id="photo-pnp"):
                with gr.Row():
                    with gr.Column(scale=1):
                        n_image = gr.Image(label="Photo", type="pil", sources=["upload", "clipboard"],
                                           elem_id="pnp-image")
                        n_target = gr.Textbox(label="Target prompt", placeholder="a watercolor painting of a cat",
                                              elem_id="pnp-target")
                        n_source = gr.Textbox(label="Source prompt (optional; empty is what PnP uses)",
                                              elem_id="pnp-source")
                        with gr.Accordion("Plug-and-Play injection", open=True):
                            n_ft = gr.Slider(0, 1, value=0.8, step=0.05, label="Feature injection (pnp_f_t)",
                                             info="fraction of the steps with the source's ResNet features")
                            n_at = gr.Slider(0, 1, value=0.5, step=0.05, label="Self-attention injection (pnp_attn_t)",
                                             info="fraction of the steps with the source's self-attention")
                        n_sampling = _sampling_controls(gr, "pnp", default_steps)
                        n_run = gr.Button("Edit photo", variant="primary", elem_id="pnp-run")
                    with gr.Column(scale=2):
                        n_out = _outputs(gr, "pnp", heatmaps=False)

        # ---------------------------------------------------------------- handlers
        from . import editing

        def run_generate(source, target, *rest):
            settings, (steps, guidance, seed) = _read_p2p(rest[:-3]), rest[-3:]
            targets = _targets(target)
            outcome = editing.generate(loaded.pipe, source, targets, settings, steps=steps, guidance=guidance,
                                       seed=_seed(seed))
            return outcome, targets

        def run_photo_p2p(image, source, target, inversion, cache, *rest):
            settings, (steps, guidance, seed) = _read_p2p(rest[:-3]), rest[-3:]
            targets = _targets(target)
            outcome = editing.edit_photo_p2p(loaded.pipe, image, source, targets, settings, inversion=inversion,
                                             steps=steps, guidance=guidance, seed=_seed(seed), cache=cache)
            return outcome, targets

        def run_photo_pnp(image, target, source, f_t, attn_t, cache, steps, guidance, seed):
            outcome = editing.edit_photo_pnp(loaded.pipe, image, target, source=source, feature_threshold=f_t,
                                             attention_threshold=attn_t, steps=steps, guidance=guidance,
                                             seed=_seed(seed), cache=cache)
            return outcome, [target]

        events = [
            (g_run, run_generate, [g_source, g_target, *g_p2p, *g_sampling], g_out),
            (p_run, run_photo_p2p, [p_image, p_source, p_target, p_inversion, sessions_cache, *p_p2p, *p_sampling],
             p_out),
            (n_run, run_photo_pnp, [n_image, n_target, n_source, n_ft, n_at, sessions_cache, *n_sampling], n_out),
        ]
        for button, fn, inputs, outputs in events:
            button.click(guarded(fn, len(outputs) - 1), inputs=inputs, outputs=outputs,
                         concurrency_limit=1, concurrency_id=RUN_GROUP)
    app.editkit_model = loaded  # for tests and launchers: what was loaded, or why not
    return app


def _seed(value):
    return None if value is None or value < 0 else int(value)


def _read_p2p(values) -> P2PSettings:
    """The values of :func:`_p2p_controls`' components, in order, as settings."""
    kind, cross, self_, blend_src, blend_tgt, *rows = values
    pairs = [(rows[2 * k], rows[2 * k + 1]) for k in range(REWEIGHT_ROWS)]
    return P2PSettings(
        kind=kind,
        cross_replace=float(cross),
        self_replace=float(self_),
        reweight=parse_reweight(pairs),
        blend_source=words_of(blend_src),
        blend_target=words_of(blend_tgt),
    )


def _p2p_controls(gr, prefix: str) -> list:
    with gr.Accordion("Prompt-to-Prompt edit", open=True):
        kind = gr.Radio(["replace", "refine"], value="replace", label="Edit",
                        info="replace: swap words (same number of words); refine: add or change words",
                        elem_id=f"{prefix}-kind")
        with gr.Row():
            cross = gr.Slider(0, 1, value=0.8, step=0.05, label="Cross-attention replace fraction")
            self_ = gr.Slider(0, 1, value=0.4, step=0.05, label="Self-attention replace fraction")
        with gr.Row():
            blend_src = gr.Textbox(label="Local blend: source words", placeholder="cat",
                                   info="only the region of these words changes", elem_id=f"{prefix}-blend-src")
            blend_tgt = gr.Textbox(label="Local blend: target words", placeholder="dog", elem_id=f"{prefix}-blend-tgt")
    rows = []
    with gr.Accordion("Re-weight words (attention strength)", open=False):
        for k in range(REWEIGHT_ROWS):
            with gr.Row():
                rows.append(gr.Textbox(label=f"Word {k + 1}", placeholder="smiling", elem_id=f"{prefix}-rw-word-{k}"))
                rows.append(gr.Slider(-2, 5, value=1.0, step=0.1, label="Strength", elem_id=f"{prefix}-rw-strength-{k}"))
    return [kind, cross, self_, blend_src, blend_tgt, *rows]


def _sampling_controls(gr, prefix: str, default_steps: int) -> list:
    with gr.Accordion("Sampling", open=False):
        steps = gr.Slider(1, 100, value=default_steps, step=1, label="Steps", elem_id=f"{prefix}-steps")
        guidance = gr.Slider(1, 15, value=7.5, step=0.5, label="Guidance scale")
        seed = gr.Number(value=0, precision=0, label="Seed (-1: random)")
    return [steps, guidance, seed]


def _outputs(gr, prefix: str, heatmaps: bool) -> list:
    status = gr.Markdown("", elem_id=f"{prefix}-status")
    result = gr.Gallery(label="Source and edited", columns=2, height="auto", object_fit="contain",
                        elem_id=f"{prefix}-result")
    outs = [status, result]
    if heatmaps:
        outs.append(gr.Image(label="Cross-attention per token (one row per prompt)", type="pil", interactive=False,
                             elem_id=f"{prefix}-heatmaps"))
    outs.append(gr.File(label="Download", file_count="multiple", interactive=False, elem_id=f"{prefix}-files"))
    return outs


def launch(
    model=DEFAULT_MODEL,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    device=None,
    dtype=None,
    default_steps: int = 50,
    block: bool = True,
    **launch_kwargs,
):
    """Build the app and serve it (``block=False`` returns at once, for tests and notebooks)."""
    app = build_app(model, device=device, dtype=dtype, default_steps=default_steps)
    app.queue()
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=not block,
               footer_links=[], **launch_kwargs)
    return app


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The editkit editing UI (same as `editkit ui`).")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    launch(args.model, host=args.host, port=args.port, device=args.device)
