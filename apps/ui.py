"""The editing UI: a Gradio app over editkit's Prompt-to-Prompt, inversion and Plug-and-Play (SD 1.x/2.x,
SDXL) and FlowEdit / RF-Inversion (SD3 / SD3.5, FLUX.1). The tabs offered are the loaded family's methods.

For Stable Diffusion UNets, three tabs, one per way of editing:

* **Generate & edit**: generate an image from a source prompt and edit it with Prompt-to-Prompt.
* **Edit a photo (P2P)**: invert an uploaded photo (null-text, negative-prompt, DDIM or direct inversion) and
  edit it with Prompt-to-Prompt.
* **Edit a photo (PnP)**: edit an uploaded photo with Plug-and-Play.

For SD3 / FLUX, two tabs:

* **Edit a photo (FlowEdit)**: edit an uploaded photo with FlowEdit (inversion-free) or RF-Inversion.
* **Generate & edit (FlowEdit)**: generate an image from a source prompt and FlowEdit it into the targets.

The model is loaded once, when the app is built, and shared by every browser session; runs are serialised
(one concurrency group of size 1, plus a lock) because editing installs attention hooks on the shared UNet.
Everything else that changes while a user works (the inversion cache, the attention maps of the last run)
lives in ``gr.State``, which Gradio keeps per browser session, so two users never see each other's results.

Progress comes from :mod:`editkit.progress`: every step of every loop (inversion, null-text optimisation,
sampling) reports to the page with the stage named and the time left in it. Cancel sets a flag of the
session that the reporter reads at the next step and answers with :class:`editkit.progress.Cancelled`, so the
run stops there and frees the model. Downloads are written to one folder per session, removed when the tab
closes (``demo.unload``) or the app closes.

Run it with ``editkit-ui --model PATH_OR_HUB_ID`` (or ``python -m apps.ui --model ...``).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from editkit import jobs
from editkit.jobs import INVERSION_COST, INVERSION_METHODS, InputError, InversionCache, Outcome, P2PSettings

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
REWEIGHT_ROWS = 3  # word + strength rows offered for attention re-weighting
MAX_TARGETS_PICK = 4  # re-weight rows can name one of the first few targets
RUN_GROUP = "editkit-pipeline"  # every run event shares this concurrency group (size 1)
OWNER = "editkit-ui"  # safeio ownership mark of the download folders
HEATMAP_PX = 384  # width of the token heatmap in the page
# Largest upload (--max-upload-mb): room for a photo at the decoder's pixel limit as JPEG / WebP and most PNGs.
# Gradio refuses a larger file while it streams in (HTTP 413), before anything reads it, and the page says so.
MAX_UPLOAD_MB = 100


@dataclass
class LoadedModel:
    """The pipeline of this app (or why there is none), loaded once when the app is built."""

    name: str
    pipe: object | None = None
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    family: str | None = None  # editkit.models.FAMILIES key of the loaded pipeline

    @classmethod
    def load(cls, model, device=None, dtype=None) -> LoadedModel:
        from editkit import ModelNotFoundError, load_pipeline

        name = model if isinstance(model, str) else type(model).__name__
        from editkit.models import family_of

        try:
            pipe = load_pipeline(model, device=device, dtype=dtype)
        except (ModelNotFoundError, TypeError, ValueError) as e:
            return cls(name=str(name), error=str(e))
        return cls(name=str(name), pipe=pipe, family=family_of(pipe))

    @property
    def is_flow(self) -> bool:
        from editkit.models import FLOW_FAMILIES

        return self.family in FLOW_FAMILIES

    def describe(self) -> str:
        if self.pipe is None:
            return f"**No model loaded.** `{self.name}` could not be loaded:\n\n```\n{self.error}\n```"
        from editkit.models import family_name

        device = self.pipe.device
        denoiser = self.pipe.transformer if self.is_flow else self.pipe.unet
        dtype = str(denoiser.dtype).replace("torch.", "")
        return (f"Model: `{self.name}` ({type(self.pipe).__name__}, {family_name(self.family)}) on **{device}** in "
                f"**{dtype}**.")


class Sessions:
    """Per browser session: a cancel flag and a download folder (created on first use, removed on unload)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}
        self._folders: dict[str, Path] = {}

    def cancel_event(self, session: str) -> threading.Event:
        with self._lock:
            return self._cancel.setdefault(session, threading.Event())

    def folder(self, session: str) -> Path:
        from safeio import make_owned_dir

        with self._lock:
            if session not in self._folders:
                path = Path(tempfile.mkdtemp(prefix="editkit-ui-"))
                self._folders[session] = make_owned_dir(path, OWNER)
            return self._folders[session]

    def close(self, session: str) -> None:
        from safeio import OwnershipError, remove_owned_dir

        with self._lock:
            self._cancel.pop(session, None)
            folder = self._folders.pop(session, None)
        if folder is not None:
            try:
                remove_owned_dir(folder, OWNER)
            except (OwnershipError, OSError) as e:
                log.warning("could not remove %s: %s", folder, e)

    def close_all(self) -> None:
        for session in list(self._folders):
            self.close(session)


def _status_ok(outcome: Outcome, seconds: float) -> str:
    msg = f"Done in {seconds:.1f} s."
    if outcome.inversion_reused is True:
        msg += " Inversion reused (same photo and inversion settings)."
    elif outcome.inversion_reused is False:
        msg += " Inversion computed and kept for this session."
    return msg + "".join(f" {n}" for n in outcome.notes)


def _status_error(message: str) -> str:
    return f"**Could not edit:** {message} _(The previous result stays on screen.)_"


def _save_outputs(outcome: Outcome, labels: list[str], folder: Path) -> list[str]:
    """Write the images of one run (and the full heatmap grids) to the session's folder, for the download box."""
    from safeio import atomic_path

    for old in folder.glob("*.png"):  # Gradio has copied the previous run's files into its own cache
        old.unlink(missing_ok=True)
    paths = []
    images = [*zip(labels, [outcome.source, *outcome.targets], strict=True)]
    images += [(f"heatmaps_{caption.split(':')[0]}", grid) for caption, grid in outcome.heatmaps]
    for label, image in images:
        paths.append(folder / f"{label.replace(' ', '_')}.png")
        with atomic_path(paths[-1]) as tmp:
            image.save(tmp, format="PNG")
    return [str(p) for p in paths]


def _result_gallery(outcome: Outcome, target_prompts: list[str]):
    items = [(outcome.source, "source")]
    items += [(img, f"edited: {t}") for img, t in zip(outcome.targets, target_prompts, strict=False)]
    return items


def _targets(text: str) -> list[str]:
    """One target prompt per line."""
    return [t.strip() for t in (text or "").splitlines() if t.strip()]


def _seed(value):
    return None if value is None or value < 0 else int(value)


class _Reporter:
    """editkit.progress reporter: page progress with the stage and time left; Cancelled when asked to stop."""

    def __init__(self, progress, cancel: threading.Event):
        self.progress, self.cancel = progress, cancel
        self.stage, self.started, self.last = None, 0.0, (None, 0, 0)

    def __call__(self, stage: str, step: int, total: int) -> None:
        from editkit.progress import Cancelled

        if self.cancel.is_set():
            raise Cancelled()
        now = time.perf_counter()
        if stage != self.stage or step <= 1:
            self.stage, self.started = stage, now
        self.last = (stage, step, total)
        done = max(step - 1, 0) if step > 1 else 0
        left = (now - self.started) / done * (total - step + 1) if done else None
        eta = f", about {left:.0f} s left in this stage" if left is not None else ""
        self.progress((step, total), desc=f"{stage}: step {step} of {total}{eta}")


def _tokens(entry) -> list[str]:
    return [f"{i}: {tok}" for i, tok in enumerate(entry.tokens)]


def _default_token(entry) -> int:
    """The first word of the prompt (after the start token)."""
    return 1 if len(entry.tokens) > 2 else 0


def build_app(model=DEFAULT_MODEL, *, device=None, dtype=None, default_steps: int | None = None, title: str = "editkit"):
    """Build the editing UI (a ``gr.Blocks``); the model is loaded here, once.

    Args:
        model: a hub id, a local diffusers folder, a single checkpoint file, or a loaded pipeline.
        device: default CUDA when available, else CPU.
        dtype: default fp16 on CUDA, fp32 on CPU.
        default_steps: initial value of the steps sliders (default: 50 for SD / SDXL, FlowEdit's reference T
            for SD3 / FLUX).
    """
    from editkit.progress import Cancelled, reporting

    loaded = LoadedModel.load(model, device=device, dtype=dtype)
    sessions = Sessions()

    def guarded(run, outputs: dict):
        """Run an edit under the model lock with live progress; a failure is said in the status line and
        leaves the previous result on screen (the app keeps going)."""
        status, gallery, files, maps_state = outputs["status"], outputs["gallery"], outputs["files"], outputs.get("maps")
        picker = outputs.get("picker")

        def unchanged(message):  # only the status changes: the last good result stays on screen
            return {status: message}

        def wrapper(values: dict, request: gr.Request, progress=gr.Progress()):
            if loaded.pipe is None:
                return unchanged(_status_error(f"no model is loaded.\n\n```\n{loaded.error}\n```"))
            session = request.session_hash or "anonymous"
            cancel = sessions.cancel_event(session)
            cancel.clear()
            reporter = _Reporter(progress, cancel)
            start = time.perf_counter()
            try:
                with loaded.lock, reporting(reporter):
                    progress(0, desc="Starting")
                    outcome, prompts = run(values)
            except Cancelled:
                stage, step, total = reporter.last
                where = f" at {stage} step {step} of {total}" if stage else ""
                return unchanged(f"**Cancelled**{where}. The previous result stays on screen.")
            except InputError as e:
                return unchanged(_status_error(str(e)))
            except Exception as e:  # noqa: BLE001 - the page must survive any failure and say what happened
                log.exception("edit failed")
                return unchanged(_status_error(f"{type(e).__name__}: {e}"))
            labels = ["source"] + [f"target_{k}" for k in range(len(outcome.targets))]
            out = {
                status: _status_ok(outcome, time.perf_counter() - start),
                gallery: _result_gallery(outcome, prompts),
                files: _save_outputs(outcome, labels, sessions.folder(session)),
            }
            if maps_state is not None:
                out[maps_state] = outcome.attention
                out.update(_picker_updates(gr, picker, outcome.attention))
            return out

        return wrapper

    def cancel_run(request: gr.Request):
        sessions.cancel_event(request.session_hash or "anonymous").set()

    with gr.Blocks(title=title, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# {title}: training-free image editing")
        gr.Markdown(loaded.describe(), elem_id="model-info")
        sessions_cache = gr.State(InversionCache())

        if loaded.is_flow:
            _flow_tabs(gr, loaded, guarded, cancel_run, default_steps)
        else:
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
                            g_sampling = _sampling_controls(gr, "gen", default_steps or 50)
                            g_run, g_cancel = _run_buttons(gr, "gen", "Generate and edit")
                        with gr.Column(scale=2):
                            g_out = _outputs(gr, "gen", heatmaps=True)

                # ---------------------------------------------------------------- photo, P2P
                with gr.Tab("Edit a photo (P2P)", id="photo-p2p"):
                    with gr.Row():
                        with gr.Column(scale=1):
                            p_photo = _photo_input(gr, "p2p")
                            p_source = gr.Textbox(label="Source prompt (describes the photo)",
                                                  placeholder="a cat sitting on a table", elem_id="p2p-source")
                            p_target = gr.Textbox(label="Target prompt(s), one per line", lines=2,
                                                  placeholder="a dog sitting on a table", elem_id="p2p-target")
                            p_inversion = gr.Radio(list(INVERSION_METHODS), value="null-text", label="Inversion",
                                                   info="Time of inversion + edit relative to DDIM, measured on the tiny test model (benchmarks/"
                                                   "bench_inversion_cost.py): "
                                                   + "; ".join(f"{m}: {INVERSION_COST[m]}" for m in INVERSION_METHODS),
                                                   elem_id="p2p-inversion")
                            p_p2p = _p2p_controls(gr, "p2p")
                            p_sampling = _sampling_controls(gr, "p2p", default_steps or 50)
                            p_run, p_cancel = _run_buttons(gr, "p2p", "Edit photo")
                        with gr.Column(scale=2):
                            p_out = _outputs(gr, "p2p", heatmaps=True)

                # ---------------------------------------------------------------- photo, PnP
                with gr.Tab("Edit a photo (PnP)", id="photo-pnp"):
                    with gr.Row():
                        with gr.Column(scale=1):
                            n_photo = _photo_input(gr, "pnp")
                            n_target = gr.Textbox(label="Target prompt", placeholder="a watercolor painting of a cat",
                                                  elem_id="pnp-target")
                            n_source = gr.Textbox(label="Source prompt (optional; empty is what PnP uses)",
                                                  elem_id="pnp-source")
                            with gr.Accordion("Plug-and-Play injection", open=True):
                                n_ft = gr.Slider(0, 1, value=0.8, step=0.05, label="Feature injection (pnp_f_t)",
                                                 info="fraction of the steps with the source's ResNet features")
                                n_at = gr.Slider(0, 1, value=0.5, step=0.05, label="Self-attention injection (pnp_attn_t)",
                                                 info="fraction of the steps with the source's self-attention")
                            n_sampling = _sampling_controls(gr, "pnp", default_steps or 50)
                            n_run, n_cancel = _run_buttons(gr, "pnp", "Edit photo")
                        with gr.Column(scale=2):
                            n_out = _outputs(gr, "pnp", heatmaps=False)

            # ---------------------------------------------------------------- handlers
            def run_generate(v):
                targets = _targets(v[g_target])
                outcome = jobs.generate(loaded.pipe, v[g_source], targets, _read_p2p(v, g_p2p, len(targets)),
                                        **_read_sampling(v, g_sampling))
                return outcome, targets

            def run_photo_p2p(v):
                targets = _targets(v[p_target])
                outcome = jobs.edit_photo_p2p(loaded.pipe, v[p_photo["file"]], v[p_source], targets,
                                              _read_p2p(v, p_p2p, len(targets)), inversion=v[p_inversion],
                                              keep_aspect=bool(v[p_photo["keep"]]), cache=v[sessions_cache],
                                              **_read_sampling(v, p_sampling))
                return outcome, targets

            def run_photo_pnp(v):
                outcome = jobs.edit_photo_pnp(loaded.pipe, v[n_photo["file"]], v[n_target], source=v[n_source],
                                              feature_threshold=v[n_ft], attention_threshold=v[n_at],
                                              keep_aspect=bool(v[n_photo["keep"]]), cache=v[sessions_cache],
                                              **_read_sampling(v, n_sampling))
                return outcome, [v[n_target]]

            def components(*groups) -> set:
                out = set()
                for g in groups:
                    out |= set(g.values()) if isinstance(g, dict) else set(g) if isinstance(g, list) else {g}
                return out

            events = [
                (g_run, g_cancel, run_generate, components(g_source, g_target, g_p2p, g_sampling), g_out),
                (p_run, p_cancel, run_photo_p2p, components(p_photo["file"], p_photo["keep"], p_source, p_target,
                                                            p_inversion, sessions_cache, p_p2p, p_sampling), p_out),
                (n_run, n_cancel, run_photo_pnp, components(n_photo["file"], n_photo["keep"], n_target, n_source, n_ft,
                                                            n_at, sessions_cache, n_sampling), n_out),
            ]
            _wire_runs(events, guarded, cancel_run)
            for photo in (p_photo, n_photo):
                photo["file"].change(_describe_photo, inputs=[photo["file"], photo["keep"]],
                                     outputs=[photo["preview"], photo["note"]], queue=False)
                photo["keep"].change(_describe_photo, inputs=[photo["file"], photo["keep"]],
                                     outputs=[photo["preview"], photo["note"]], queue=False)
            for out in (g_out, p_out):
                picker = out["picker"]
                # .input, not .change: a run sets the prompt itself, with its map; a second identical map
                # would make Gradio rewrite the same cache file in place while the page is still fetching it
                # (a broken picture, and "Too much data for declared Content-Length" in the log)
                picker["prompt"].input(_on_prompt(gr, picker), inputs=[out["maps"], picker["prompt"]],
                                       outputs=list(picker.values()), queue=False)
                picker["token"].input(_show_token, inputs=[out["maps"], picker["prompt"], picker["token"]],
                                      outputs=[picker["image"]], queue=False)

        def close_session(request: gr.Request):
            sessions.close(request.session_hash or "anonymous")

        app.unload(close_session)
    app.editkit_model = loaded  # for tests and launchers: what was loaded, or why not
    app.editkit_sessions = sessions
    return app


def _flow_tabs(gr, loaded, guarded, cancel_run, default_steps):
    """The tabs of an SD3 / FLUX model: FlowEdit or RF-Inversion on a photo; generate, then FlowEdit."""
    from editkit.flow import flowedit as fe
    from editkit.flow.edit import FlowSettings, edit_photo, generate_and_edit

    base = fe.default_config(loaded.pipe)
    steps0 = default_steps or base.num_inference_steps
    strength0 = round(base.n_max / base.num_inference_steps, 2)

    def flow_controls(prefix: str, methods: bool) -> dict:
        c = {}
        if methods:
            c["method"] = gr.Radio(["flowedit", "rf-inversion"], value="flowedit", label="Method",
                                   info="FlowEdit: inversion-free (Kulikov et al.); RF-Inversion: controlled "
                                        "inversion and sampling (Rout et al.)", elem_id=f"{prefix}-method")
        with gr.Accordion("FlowEdit", open=True):
            c["strength"] = gr.Slider(0.05, 1, value=strength0, step=0.01, label="Strength (n_max / steps)",
                                      info=f"the edit runs the last n_max steps; reference: {base.n_max} of "
                                           f"{base.num_inference_steps}", elem_id=f"{prefix}-strength")
            c["n_avg"] = gr.Slider(1, 4, value=base.n_avg, step=1, label="Noise draws averaged per step (n_avg)",
                                   elem_id=f"{prefix}-n-avg")
            with gr.Row():
                c["src_g"] = gr.Slider(0, 20, value=base.source_guidance, step=0.5, label="Source guidance",
                                       elem_id=f"{prefix}-source-guidance")
                c["tar_g"] = gr.Slider(0, 20, value=base.target_guidance, step=0.5, label="Target guidance",
                                       elem_id=f"{prefix}-target-guidance")
        if methods:
            with gr.Accordion("RF-Inversion", open=False):
                c["gamma"] = gr.Slider(0, 1, value=0.5, step=0.05, label="gamma (inversion towards noise)")
                c["eta"] = gr.Slider(0, 1, value=1.0, step=0.05, label="eta (sampling towards the photo)")
        with gr.Accordion("Steps and seed", open=True):
            c["steps"] = gr.Slider(1, 100, value=steps0, step=1, label="Steps", elem_id=f"{prefix}-steps")
            c["seed"] = gr.Number(value=0, precision=0, label="Seed (-1: random)", elem_id=f"{prefix}-seed")
        return c

    def read(v, c) -> tuple[FlowSettings, int | None]:
        method = v[c["method"]] if "method" in c else "flowedit"
        steps = int(v[c["steps"]])
        settings = FlowSettings(method=method, steps=steps, n_avg=int(v[c["n_avg"]]))
        if method == "flowedit":
            settings.n_max = max(1, min(steps, round(float(v[c["strength"]]) * steps)))
            settings.source_guidance, settings.target_guidance = float(v[c["src_g"]]), float(v[c["tar_g"]])
        else:
            settings.gamma, settings.eta = float(v[c["gamma"]]), float(v[c["eta"]])
        return settings, _seed(v[c["seed"]])

    def prompts(v, source_box, target_box):
        source, targets = (v[source_box] or "").strip(), _targets(v[target_box])
        if not source:
            raise InputError("give the source prompt (what the image shows)")
        if not targets:
            raise InputError("give at least one target prompt")
        return source, targets

    with gr.Tab("Edit a photo (FlowEdit)", id="photo-flow"):
        with gr.Row():
            with gr.Column(scale=1):
                f_photo = _photo_input(gr, "flow", aspect_choice=False)  # flow models keep the aspect
                f_source = gr.Textbox(label="Source prompt (describes the photo)", placeholder="a cat sitting on a table",
                                      elem_id="flow-source")
                f_target = gr.Textbox(label="Target prompt(s), one per line", lines=2,
                                      placeholder="a dog sitting on a table", elem_id="flow-target")
                f_c = flow_controls("flow", methods=True)
                f_run, f_cancel = _run_buttons(gr, "flow", "Edit photo")
            with gr.Column(scale=2):
                f_out = _outputs(gr, "flow", heatmaps=False)
    with gr.Tab("Generate & edit (FlowEdit)", id="generate-flow"):
        with gr.Row():
            with gr.Column(scale=1):
                q_source = gr.Textbox(label="Source prompt", value="a photo of a cat", elem_id="fgen-source")
                q_target = gr.Textbox(label="Target prompt(s), one per line", value="a photo of a dog", lines=2,
                                      elem_id="fgen-target")
                q_c = flow_controls("fgen", methods=False)
                q_run, q_cancel = _run_buttons(gr, "fgen", "Generate and edit")
            with gr.Column(scale=2):
                q_out = _outputs(gr, "fgen", heatmaps=False)

    def run_photo(v):
        path = v[f_photo["file"]]
        if path is None:
            raise InputError("upload a photo first")
        jobs.open_photo(path).close()
        source, targets = prompts(v, f_source, f_target)
        settings, seed = read(v, f_c)
        try:
            src, edits = edit_photo(loaded.pipe, path, source, targets, settings, seed=seed)
        except ValueError as e:  # the engine's input checks (settings, sizes): said in the page
            raise InputError(str(e)) from e
        return Outcome(source=src, targets=edits, notes=[f"{settings.method}, {settings.steps} steps."]), targets

    def run_generate(v):
        source, targets = prompts(v, q_source, q_target)
        settings, seed = read(v, q_c)
        try:
            src, edits = generate_and_edit(loaded.pipe, source, targets, settings, seed=seed)
        except ValueError as e:
            raise InputError(str(e)) from e
        return Outcome(source=src, targets=edits), targets

    _wire_runs([
        (f_run, f_cancel, run_photo, [f_photo["file"], f_source, f_target, *f_c.values()], f_out),
        (q_run, q_cancel, run_generate, [q_source, q_target, *q_c.values()], q_out),
    ], guarded, cancel_run)
    f_photo["file"].change(_describe_flow_photo(loaded.pipe), inputs=[f_photo["file"]],
                           outputs=[f_photo["preview"], f_photo["note"]], queue=False)


def _wire_runs(events, guarded, cancel_run) -> None:
    """Each tab's Run button (its function reads the inputs as a dict; one run at a time across the app) and
    its Cancel. ``events``: (run button, cancel button, function, inputs, outputs as ``_outputs`` made them)."""
    for button, cancel, fn, inputs, outputs in events:
        out_list = [c for c in outputs.values() if c is not None and not isinstance(c, dict)]
        out_list += list(outputs["picker"].values()) if "picker" in outputs else []
        button.click(guarded(fn, outputs), inputs=set(inputs), outputs=out_list, concurrency_limit=1,
                     concurrency_id=RUN_GROUP)
        cancel.click(cancel_run, inputs=None, outputs=None, queue=False)


def _describe_flow_photo(pipe):
    def describe(path):
        if path is None:
            return None, ""
        try:
            image = jobs.open_photo(path)
        except InputError as e:
            return None, f"**Cannot use this file:** {e}"
        from editkit.flow.edit import photo_size

        preview = image.convert("RGB")
        preview.thumbnail((512, 512))
        f = 2 * pipe.vae_scale_factor
        size = photo_size(pipe, image)
        w, h = image.size
        if size is not None:
            scale = size / max(w, h)
            w, h = round(w * scale), round(h * scale)
        return preview, f"{image.width} x {image.height} px; edited at {w // f * f} x {h // f * f} px."

    return describe


def _picker_updates(gr, picker, maps, label=None) -> dict:
    """Prompt choices, token choices and the map of the chosen token, after a run or a prompt change."""
    if not maps:
        return {picker["prompt"]: gr.update(choices=[], value=None), picker["token"]: gr.update(choices=[], value=None),
                picker["image"]: None}
    entry = next((m for m in maps if m.label == label), maps[-1])
    token = _default_token(entry)
    return {
        picker["prompt"]: gr.update(choices=[m.label for m in maps], value=entry.label),
        picker["token"]: gr.update(choices=_tokens(entry), value=_tokens(entry)[token]),
        picker["image"]: jobs.token_heatmap(entry, token, size=HEATMAP_PX),
    }


def _on_prompt(gr, picker):
    def on_prompt(maps, label):
        return _picker_updates(gr, picker, maps, label)

    return on_prompt


def _show_token(maps, label, token):
    if not maps or token is None:
        return None
    entry = next((m for m in maps if m.label == label), maps[-1])
    return jobs.token_heatmap(entry, int(str(token).split(":", 1)[0]), size=HEATMAP_PX)


def _describe_photo(path, keep_aspect):
    """Preview and a plain note for an upload: what is wrong with it, or how it will be cropped."""
    if path is None:
        return None, ""
    try:
        image = jobs.open_photo(path)
    except InputError as e:
        return None, f"**Cannot use this file:** {e}"
    preview = image.convert("RGB")
    preview.thumbnail((512, 512))
    return preview, jobs.crop_note(image, bool(keep_aspect))


def _read_sampling(v, controls) -> dict:
    steps, guidance, seed = controls
    return dict(steps=v[steps], guidance=v[guidance], seed=_seed(v[seed]))


def _read_p2p(v, controls, n_targets: int) -> P2PSettings:
    """The values of :func:`_p2p_controls`' components as settings, with each target's own words."""
    kind, cross, self_, blend_src, blend_tgt, *rows = controls
    blend_lines = [words_of_line for words_of_line in (v[blend_tgt] or "").splitlines() if words_of_line.strip()]
    if len(blend_lines) > 1 and len(blend_lines) != n_targets:
        raise InputError(f"Local blend target words: {len(blend_lines)} lines for {n_targets} target prompts; "
                         "write one line per target (or one line for all).")
    per_target = [jobs.TargetWords(blend=jobs.words_of(blend_lines[k] if len(blend_lines) > 1 else
                                                        (blend_lines[0] if blend_lines else "")))
                  for k in range(n_targets)]
    for k in range(REWEIGHT_ROWS):
        word, strength, which = (v[c] for c in rows[3 * k: 3 * k + 3])
        weights = jobs.parse_reweight([(word, strength)])
        if not weights:
            continue
        if which == "all targets":
            chosen = range(n_targets)
        else:
            index = int(which.split()[-1]) - 1
            if index >= n_targets:
                raise InputError(f"Re-weight row {k + 1} names {which}, but there are {n_targets} target prompts.")
            chosen = [index]
        for i in chosen:
            per_target[i].reweight.update(weights)
    return P2PSettings(
        kind=v[kind],
        cross_replace=float(v[cross]),
        self_replace=float(v[self_]),
        blend_source=jobs.words_of(v[blend_src]),
        per_target=per_target,
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
            blend_tgt = gr.Textbox(label="Local blend: target words", placeholder="dog", lines=2,
                                   info="one line per target prompt (one line: the same for all)",
                                   elem_id=f"{prefix}-blend-tgt")
    rows = []
    choices = ["all targets"] + [f"target {k + 1}" for k in range(MAX_TARGETS_PICK)]
    with gr.Accordion("Re-weight words (attention strength)", open=False):
        for k in range(REWEIGHT_ROWS):
            with gr.Row():
                rows.append(gr.Textbox(label=f"Word {k + 1}", placeholder="smiling", elem_id=f"{prefix}-rw-word-{k}"))
                rows.append(gr.Slider(-2, 5, value=1.0, step=0.1, label="Strength", elem_id=f"{prefix}-rw-strength-{k}"))
                rows.append(gr.Dropdown(choices, value="all targets", label="In", elem_id=f"{prefix}-rw-target-{k}"))
    return [kind, cross, self_, blend_src, blend_tgt, *rows]


def _sampling_controls(gr, prefix: str, default_steps: int) -> list:
    with gr.Accordion("Sampling", open=False):
        steps = gr.Slider(1, 100, value=default_steps, step=1, label="Steps", elem_id=f"{prefix}-steps")
        guidance = gr.Slider(1, 15, value=7.5, step=0.5, label="Guidance scale")
        seed = gr.Number(value=0, precision=0, label="Seed (-1: random)")
    return [steps, guidance, seed]


def _run_buttons(gr, prefix: str, label: str):
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=f"{prefix}-run", scale=3)
        cancel = gr.Button("Cancel", variant="stop", elem_id=f"{prefix}-cancel", scale=1)
    return run, cancel


def _photo_input(gr, prefix: str, aspect_choice: bool = True) -> dict:
    """An upload box we check ourselves (Gradio's image input fails on unreadable files with a bare
    'Error'), a preview, a note saying what is wrong or how the photo will be cropped, and the aspect choice."""
    file = gr.File(label="Photo (PNG, JPEG, WebP, ...)", file_types=["image"], type="filepath",
                   elem_id=f"{prefix}-image")
    preview = gr.Image(label="Preview", type="pil", interactive=False, height=256, elem_id=f"{prefix}-preview")
    note = gr.Markdown("", elem_id=f"{prefix}-photo-note")
    keep = gr.Checkbox(False, label="Keep aspect ratio (no centre crop; longer side at the model's size)",
                       elem_id=f"{prefix}-keep-aspect", visible=aspect_choice)
    return {"file": file, "preview": preview, "note": note, "keep": keep}


def _outputs(gr, prefix: str, heatmaps: bool) -> dict:
    status = gr.Markdown("", elem_id=f"{prefix}-status")
    result = gr.Gallery(label="Source and edited", columns=2, height="auto", object_fit="contain",
                        elem_id=f"{prefix}-result")
    outs = {"status": status, "gallery": result}
    if heatmaps:
        with gr.Accordion("Cross-attention heatmaps", open=True):
            with gr.Row():
                prompt = gr.Dropdown([], label="Prompt", elem_id=f"{prefix}-map-prompt", scale=1)
                token = gr.Dropdown([], label="Token", elem_id=f"{prefix}-map-token", scale=1)
            image = gr.Image(label="Attention of the chosen token over the image", type="pil", interactive=False,
                             width=HEATMAP_PX, elem_id=f"{prefix}-token-map")
        outs["maps"] = gr.State([])
        outs["picker"] = {"prompt": prompt, "token": token, "image": image}
    outs["files"] = gr.File(label="Download (images, and every token's map in one grid per prompt)",
                            file_count="multiple", interactive=False, elem_id=f"{prefix}-files")
    return outs


def _is_local(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _looks_local(model: str) -> bool:
    """A path rather than a hub id (ORG/NAME): starts with ./ ../ / ~, has more than one separator (the rule
    editkit.models applies before asking the hub) or a backslash, or names a checkpoint file."""
    return (model.startswith((".", "/", "~")) or "\\" in model or model.rstrip("/").count("/") > 1
            or model.endswith((".safetensors", ".ckpt")))


def _parse_auth(text: str | None):
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth takes USER:PASSWORD, e.g. --auth alice:s3cret")
    return (user, password)


def launch(
    model=DEFAULT_MODEL,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    auth: tuple[str, str] | None = None,
    device=None,
    dtype=None,
    default_steps: int | None = None,
    block: bool = True,
    max_upload_mb: int = MAX_UPLOAD_MB,
    **launch_kwargs,
):
    """Build the app and serve it (``block=False`` returns at once, for tests and notebooks); uploads larger
    than ``max_upload_mb`` MB are refused."""
    if not _is_local(host) and auth is None:
        print(f"editkit-ui: warning: serving on {host} without a password: anyone who can reach this machine can "
              "use it. Pass --auth USER:PASSWORD.", file=sys.stderr)
    app = build_app(model, device=device, dtype=dtype, default_steps=default_steps)
    # gr.Blocks sets up its queue (Gradio's defaults, which the progress and Cancel rely on) when it is made;
    # calling app.queue() again only built the server app a fourth time
    # quiet: Gradio's own banner advises `share=True` in `launch()`; our flag is --share, said below
    app.launch(server_name=host, server_port=port, share=share, auth=auth, prevent_thread_lock=True, quiet=True,
               footer_links=[], max_file_size=f"{max_upload_mb}mb", **launch_kwargs)
    print(f"editkit-ui: serving on {app.local_url}", file=sys.stderr)
    if share and app.share_url:
        print(f"editkit-ui: public link {app.share_url}", file=sys.stderr)
    elif block:
        print("editkit-ui: pass --share for a public gradio.live link; Ctrl-C stops", file=sys.stderr)
    if block:
        _serve_until_stopped(app)
    return app


def _serve_until_stopped(app) -> None:
    """Serve until Ctrl-C (SIGINT) or SIGTERM, then close the server and remove every session's download folder.

    Both signals get a handler while serving, whatever was installed before: started as a shell script's
    background job the process inherits SIGINT ignored, and SIGTERM's default (what ``docker stop`` and
    systemd send) would end it without removing the folders."""

    def stop(signum, frame):
        raise KeyboardInterrupt  # Gradio's block_thread closes the server on it

    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {sig: signal.signal(sig, stop) for sig in signals}
    try:
        app.block_thread()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        app.editkit_sessions.close_all()


def main(argv=None) -> int:
    """Entry point of the ``editkit-ui`` console script."""
    parser = argparse.ArgumentParser(prog="editkit-ui", description="The editkit editing UI (Gradio).")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, diffusers folder or checkpoint file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: other machines)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu, mps (default: CUDA when available)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="ask for this login in the browser")
    parser.add_argument("--steps", type=int, default=None,
                        help="initial value of the steps sliders (default: 50 for SD / SDXL, FlowEdit's for SD3 / FLUX)")
    parser.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB, metavar="MB",
                        help=f"largest photo a browser may upload, in MB (default {MAX_UPLOAD_MB})")
    args = parser.parse_args(argv)
    try:
        auth = _parse_auth(args.auth)
        from editkit.models import check_device

        check_device(args.device)
        if args.max_upload_mb < 1:
            raise ValueError(f"--max-upload-mb must be at least 1, got {args.max_upload_mb}")
    except ValueError as e:
        parser.error(str(e))
    if _looks_local(args.model) and not Path(args.model).expanduser().exists():
        print(f"editkit-ui: error: --model {args.model}: no file or folder there (a local path; a hub id is "
              "ORG/NAME)", file=sys.stderr)
        return 2
    launch(args.model, host=args.host, port=args.port, share=args.share, auth=auth, device=args.device,
           default_steps=args.steps, block=True, max_upload_mb=args.max_upload_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
