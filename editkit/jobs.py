"""The one place where user-level settings become editkit calls; shared by the ``editkit`` CLI and the UI.

Nothing here imports Gradio (or anything under ``apps/``): the arrows point down, ``apps -> editkit``.
Settings arrive as plain values (strings from text boxes or flags, numbers from sliders), are checked, turned
into editkit's edit objects, and run through the engine. Every problem the user can fix (an empty prompt, a
word that is not in the prompt, a word swap whose prompts differ in length, an unreadable or oversized photo)
ends as an :class:`InputError` (a ``ValueError``) with a message meant to be shown as is.

Everything that can be checked without the model is checked by :func:`plan_p2p` (prompts, word counts,
re-weight and local-blend words, fractions), so a caller can refuse bad input before spending a minute
loading weights.

Inversions of real photos are expensive (null-text inversion optimises one embedding per step), so they are
kept in an :class:`InversionCache` keyed on the image's content hash and every parameter the inversion
depends on; a second edit of the same photo with only the target prompt changed reuses it. The caller owns
the cache: the UI keeps one per browser session (``gr.State``), the CLI one per run.

Each target prompt may have its own local-blend and re-weight words (:class:`TargetWords`). The engine's
re-weighting takes one set of words for all target rows of a run, so targets with different re-weight words
are edited in separate runs (one per distinct set) from the same source; the seed is fixed once so every
run starts from the same noise, and the source image is the same in all of them.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .image import MAX_PIXELS
from .inversion import METHODS as INVERSION_METHODS

__all__ = [
    "EDIT_KINDS",
    "INVERSION_COST",
    "INVERSION_METHODS",
    "MAX_PHOTO_PIXELS",
    "EditGroup",
    "InputError",
    "InversionCache",
    "Outcome",
    "P2PSettings",
    "PromptAttention",
    "TargetWords",
    "edit_photo_p2p",
    "edit_photo_pnp",
    "generate",
    "open_photo",
    "parse_reweight",
    "plan_p2p",
    "token_heatmap",
    "words_of",
]

EDIT_KINDS = ("replace", "refine")

# Photos larger than this are refused before they are decoded (a 16k x 16k PNG is 768 MB of RGB pixels);
# every model here works at 1024 px or less, so 50 megapixels leaves ample room for camera originals.
MAX_PHOTO_PIXELS = MAX_PIXELS  # one limit for the library, the CLI and the UI (editkit.image)

# What each inversion costs, inversion + one edit, relative to DDIM inversion + the same edit. Measured with
# ``benchmarks/bench_inversion_cost.py`` on the tiny test model (CPU, 10 steps, null-text 10 inner iterations),
# twice on a busy 2-core machine: null-text 17.2x and 6.4x DDIM; negative-prompt 2.0x and 0.7x, direct 2.1x
# and 0.7x (the same work as DDIM plus a few conditioning rows, so the spread is the machine's noise).
INVERSION_COST = {
    "ddim": "1x; the edit drifts from the photo",
    "null-text": "6-17x DDIM (optimises an embedding at every step); most faithful",
    "negative-prompt": "about 1x DDIM; fast, less faithful than null-text",
    "direct": "about 1x DDIM; fast, keeps the source on the inversion path",
}


class InputError(ValueError):
    """Something the user typed or chose cannot be run; the message says what and how to fix it."""


@dataclass
class TargetWords:
    """Words of one target prompt: its local-blend words and its re-weighted words."""

    blend: list[str] = field(default_factory=list)
    reweight: dict[str, float] = field(default_factory=dict)


@dataclass
class P2PSettings:
    """How the target prompts edit the source image (Prompt-to-Prompt).

    ``reweight`` and ``blend_target`` apply to every target prompt; ``per_target`` (one entry per target, in
    order) gives each target its own words instead, and takes precedence where given.
    """

    kind: str = "replace"  # "replace": word swap (same number of words); "refine": add or change words
    cross_replace: float = 0.8  # fraction of the steps in which the source's cross-attention maps are injected
    self_replace: float = 0.4  # fraction of the steps in which the source's self-attention maps are injected
    reweight: dict[str, float] = field(default_factory=dict)  # word -> attention scale (1 = unchanged)
    blend_source: list[str] = field(default_factory=list)  # local blend: words of the source prompt to edit
    blend_target: list[str] = field(default_factory=list)  # local blend: words of the target prompt(s)
    per_target: list[TargetWords] | None = None  # one per target prompt: its own blend / re-weight words


@dataclass
class PromptAttention:
    """Cross-attention of one prompt of a run, per token, for heatmaps drawn on demand."""

    label: str  # "source", "target", "target 2", ...
    prompt: str
    tokens: list[str]  # decoded tokens, start and end tokens included
    maps: object  # numpy [h, w, len(tokens)] float32, each map normalised to max 1
    image: object  # PIL image of this prompt's result


@dataclass
class Outcome:
    """What one edit produced, ready to be shown or written."""

    source: object  # PIL image: the generated or reconstructed source
    targets: list  # PIL images, one per target prompt
    heatmaps: list = field(default_factory=list)  # (caption, PIL grid) pairs: every token's map, per prompt
    attention: list[PromptAttention] = field(default_factory=list)  # per prompt, for a token picker
    inversion_reused: bool | None = None  # photos only: True when the cached inversion was used
    notes: list[str] = field(default_factory=list)


@dataclass
class EditGroup:
    """Target prompts edited together in one engine run: their indices, the edit and the local blend."""

    indices: list[int]
    edit: object
    local_blend: object | None


# ---------------------------------------------------------------------------------------------------------
# Parsing and checking user input


def words_of(text: str) -> list[str]:
    """Split a comma- or space-separated list of words: ``"cat, dog"`` -> ``["cat", "dog"]``."""
    return [w for w in re.split(r"[,\s]+", text or "") if w]


def _finite(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return number


def parse_reweight(items) -> dict[str, float]:
    """``["smiling=2", "red=0.5"]`` (CLI) or ``[("smiling", 2.0)]`` (UI rows) -> ``{"smiling": 2.0, ...}``.

    Empty words are skipped, so unused UI rows cost nothing.
    """
    out: dict[str, float] = {}
    for item in items:
        if isinstance(item, str):
            word, sep, value = item.partition("=")
            if not sep:
                raise InputError(f"re-weighting {item!r}: write WORD=SCALE, e.g. smiling=2")
            scale = _finite(value, f"re-weighting {item!r}")
        else:
            word, scale = item
            scale = _finite(scale, f"re-weighting {word!r}")
        word = (word or "").strip()
        if word:
            out[word] = scale
    return out


def check_prompts(source: str, targets) -> tuple[str, list[str]]:
    source = (source or "").strip()
    targets = [t.strip() for t in targets if t and t.strip()]
    if not source:
        raise InputError("Enter a source prompt (what the image shows now).")
    if not targets:
        raise InputError("Enter a target prompt (what the edited image should show).")
    return source, targets


def check_words_in(words, prompts, what: str):
    """Every word must occur in at least one of ``prompts``: a misspelt word would otherwise do nothing."""
    for w in words:
        if not any(w.lower() in p.lower().split() for p in prompts):
            raise InputError(f"{what}: the word {w!r} is not in {' / '.join(repr(p) for p in prompts)}.")


def check_sampling(steps, guidance) -> tuple[int, float]:
    """Steps and guidance as the engine takes them; NaN/inf and out-of-range values are refused."""
    steps_f = _finite(steps, "steps")
    if steps_f != int(steps_f) or not 1 <= steps_f <= 1000:
        raise InputError(f"steps must be a whole number from 1 to 1000, got {steps!r}")
    guidance = _finite(guidance, "guidance")
    if guidance < 0:
        raise InputError(f"guidance must be >= 0 (7.5 is usual), got {guidance}")
    return int(steps_f), guidance


def _target_words(settings: P2PSettings, n_targets: int) -> list[TargetWords]:
    if settings.per_target is None:
        return [TargetWords(list(settings.blend_target), dict(settings.reweight)) for _ in range(n_targets)]
    if len(settings.per_target) != n_targets:
        raise InputError(f"per-target words: {len(settings.per_target)} entries for {n_targets} target prompts")
    return list(settings.per_target)


def plan_p2p(settings: P2PSettings, source: str, targets: list[str]) -> list[EditGroup]:
    """Check the settings against the prompts and build the engine's edit objects; needs no model.

    Returns one :class:`EditGroup` per distinct set of re-weight words (usually one for all targets).
    """
    from . import p2p

    source, targets = check_prompts(source, targets)
    if settings.kind not in EDIT_KINDS:
        raise InputError(f"edit must be one of {EDIT_KINDS}, got {settings.kind!r}")
    for name, value in (("cross replace", settings.cross_replace), ("self replace", settings.self_replace)):
        value = _finite(value, f"{name} fraction")
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{name} fraction must be between 0 and 1, got {value}")
    if settings.kind == "replace":
        n = len(source.split())
        for t in targets:
            if len(t.split()) != n:
                raise InputError(
                    f"Word swap needs prompts with the same number of words: {source!r} has {n}, "
                    f"{t!r} has {len(t.split())}. Choose 'refine' to add or remove words."
                )
    words = _target_words(settings, len(targets))
    any_blend = bool(settings.blend_source) or any(w.blend for w in words)
    if any_blend:
        check_words_in(settings.blend_source or words[0].blend, [source], "local blend (source words)")
    for k, (target, tw) in enumerate(zip(targets, words, strict=True)):
        name = "" if len(targets) == 1 else f" of target {k + 1}"
        check_words_in(tw.reweight, [target], f"re-weighting{name}")
        for word, scale in tw.reweight.items():
            _finite(scale, f"re-weighting {word!r}")
        if any_blend:
            check_words_in(tw.blend or settings.blend_source, [target], f"local blend (target words{name})")

    base_cls = p2p.Replace if settings.kind == "replace" else p2p.Refine
    schedule = dict(cross_replace_steps=float(settings.cross_replace), self_replace_steps=float(settings.self_replace))
    groups: dict[tuple, list[int]] = {}
    for k, tw in enumerate(words):
        groups.setdefault(tuple(sorted(tw.reweight.items())), []).append(k)
    plans = []
    for reweight, indices in groups.items():
        if reweight:
            edit = p2p.Reweight(weights=dict(reweight), base=base_cls(**schedule), **schedule)
        else:
            edit = base_cls(**schedule)
        local_blend = None
        if any_blend:
            src = list(settings.blend_source or words[indices[0]].blend)
            local_blend = p2p.LocalBlend(words=[src] + [list(words[k].blend or src) for k in indices])
        plans.append(EditGroup(indices, edit, local_blend))
    return plans


def image_key(image) -> str:
    """Content hash of a PIL image (pixels, size and mode): equal images share a key wherever they came from."""
    h = hashlib.sha1()
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class InversionCache:
    """The last few inversions of this session, keyed on image hash + everything the inversion depends on."""

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._items: OrderedDict[tuple, object] = OrderedDict()

    def get(self, key: tuple):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: tuple, inversion) -> None:
        self._items[key] = inversion
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __deepcopy__(self, memo):
        # gr.State deep-copies its initial value once per browser session; tensors never need copying.
        return InversionCache(self.capacity)


# ---------------------------------------------------------------------------------------------------------
# Photos


def open_photo(image, max_pixels: int = MAX_PHOTO_PIXELS):
    """Open an uploaded or named photo (a path or a PIL image) and check it before decoding the pixels.

    Raises :class:`InputError` naming the problem: not an image, too large (the limit is named), truncated.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    if image is None:
        raise InputError("Upload a photo to edit.")
    if isinstance(image, Image.Image):
        pil, name = image, "the photo"
    else:
        path = Path(image)
        name = path.name
        if not path.is_file():
            raise InputError(f"no image file at {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                pil = Image.open(path)  # reads the header only
        except Image.DecompressionBombError:
            raise InputError(f"{name} is too large: over {max_pixels / 1e6:.0f} megapixels, the limit for "
                             "photos. Downscale it first.") from None
        except UnidentifiedImageError:
            raise InputError(f"{name} is not an image file (PNG, JPEG, WebP, ... expected).") from None
        except OSError as e:
            raise InputError(f"could not read {name}: {e.strerror or e}") from None
    if pil.width * pil.height > max_pixels:
        raise InputError(f"{name} is too large: {pil.width}x{pil.height} px is over {max_pixels / 1e6:.0f} "
                         "megapixels, the limit for photos. Downscale it first.")
    try:
        pil.load()  # decode now: a truncated or corrupt file fails here
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"could not decode {name} (truncated or corrupt?): {e}") from None
    return pil


def crop_note(image, keep_aspect: bool) -> str:
    """What happens to a photo's shape, said next to it in the UI."""
    w, h = image.size
    if w == h:
        return f"{w}x{h} px, square."
    if keep_aspect:
        return f"{w}x{h} px: aspect ratio kept (sides rounded down to what the model takes)."
    return (f"{w}x{h} px, not square: it will be centre-cropped to a square. Tick 'keep aspect ratio' to keep "
            "the whole picture.")


def _load_photo(pipe, image, keep_aspect: bool):
    from .image import load_image, model_multiple
    from .sampling import default_size

    pil = open_photo(image)
    size = max(default_size(pipe))
    try:
        return load_image(pil, size=size, keep_aspect=keep_aspect, multiple=model_multiple(pipe))
    except (OSError, ValueError) as e:
        raise InputError(f"could not use the photo: {e}") from e


# ---------------------------------------------------------------------------------------------------------
# Heatmaps


def _attention(pipe, result, prompts: list[str], labels: list[str], images: list) -> list[PromptAttention]:
    """Per prompt: the cross-attention of each of its tokens at latent/4 (what the heatmaps draw)."""
    if result.attention is None:
        return []
    out = []
    for i, (label, prompt) in enumerate(zip(labels, prompts, strict=True)):
        maps = result.attention.aggregate(4, ("up", "down"), True, i).float().cpu().numpy()  # [h, w, M]
        ids = pipe.tokenizer.encode(prompt)
        maps = maps[:, :, : len(ids)]
        maps = maps / maps.reshape(-1, maps.shape[-1]).max(axis=0).clip(min=1e-12)
        out.append(PromptAttention(label, prompt, [pipe.tokenizer.decode([int(t)]) for t in ids], maps, images[i]))
    return out


def _grids(pipe, result, prompts: list[str], labels: list[str], images: list) -> list:
    from . import p2p

    if result.attention is None:
        return []
    return [
        (f"{label}: {prompt}", p2p.cross_attention_grid(result.attention, pipe.tokenizer, prompt, prompt_index=i,
                                                        image=images[i], size=128))
        for i, (label, prompt) in enumerate(zip(labels, prompts, strict=True))
    ]


def token_heatmap(entry: PromptAttention, token: int, size: int = 384, alpha: float = 0.6):
    """The map of ``entry.tokens[token]`` over that prompt's image, ``size`` px wide (a PIL image)."""
    import numpy as np
    from PIL import Image

    if not 0 <= token < len(entry.tokens):
        raise InputError(f"token {token} is out of range: {entry.prompt!r} has {len(entry.tokens)} tokens")
    v = np.clip(entry.maps[:, :, token], 0, 1)
    rgb = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1) * 0.9 + 0.1 * v, 0.2 * (1 - v)], -1)
    heat = Image.fromarray((rgb * 255).astype(np.uint8))
    base = entry.image.convert("RGB")
    height = max(1, round(size * base.height / base.width))
    heat = heat.resize((size, height), Image.Resampling.BICUBIC)
    return Image.blend(base.resize((size, height), Image.Resampling.LANCZOS), heat, alpha)


def _labels(n_targets: int) -> list[str]:
    return ["source"] + (["target"] if n_targets == 1 else [f"target {k + 1}" for k in range(n_targets)])


def _as_user_error(e: ValueError) -> InputError:
    return e if isinstance(e, InputError) else InputError(str(e))


def cpu_generator(seed: int | None):
    import torch

    return None if seed is None else torch.Generator("cpu").manual_seed(int(seed))


def _merge(results, plans, n_targets: int):
    """The per-group engine results -> (source image, target images in order, source result)."""
    targets = [None] * n_targets
    for result, plan in zip(results, plans, strict=True):
        for image, k in zip(result.targets, plan.indices, strict=True):
            targets[k] = image
    return results[0].source, targets


def _outcome(pipe, results, plans, source, targets, heatmaps: bool, **kw) -> Outcome:
    src_image, images = _merge(results, plans, len(targets))
    outcome = Outcome(src_image, images, **kw)
    if heatmaps:
        labels = _labels(len(targets))
        # each target's attention comes from the run it was edited in; the source's from the first run
        for g, (result, plan) in enumerate(zip(results, plans, strict=True)):
            prompts = [source] + [targets[k] for k in plan.indices]
            run_labels = [labels[0]] + [labels[k + 1] for k in plan.indices]
            run_images = [src_image] + [images[k] for k in plan.indices]
            keep = slice(0, None) if g == 0 else slice(1, None)
            outcome.attention += _attention(pipe, result, prompts, run_labels, run_images)[keep]
            outcome.heatmaps += _grids(pipe, result, prompts, run_labels, run_images)[keep]
        order = {label: i for i, label in enumerate(labels)}
        outcome.attention.sort(key=lambda a: order[a.label])
        outcome.heatmaps.sort(key=lambda h: order[h[0].split(":")[0]])
    return outcome


# ---------------------------------------------------------------------------------------------------------
# The three ways in


def generate(
    pipe,
    source: str,
    targets,
    settings: P2PSettings,
    *,
    steps: int = 50,
    guidance: float = 7.5,
    seed: int | None = 0,
    heatmaps: bool = True,
    progress: bool = True,
) -> Outcome:
    """Generate an image from ``source`` and edit it into each target prompt (Prompt-to-Prompt)."""
    from . import p2p

    source, targets = check_prompts(source, targets)
    plans = plan_p2p(settings, source, targets)
    steps, guidance = check_sampling(steps, guidance)
    if seed is None and len(plans) > 1:
        seed = random.SystemRandom().randrange(2**31)  # several runs must start from the same noise
    results = []
    try:
        for plan in plans:
            results.append(p2p.generate(
                pipe,
                source,
                [targets[k] for k in plan.indices],
                edit=plan.edit,
                local_blend=plan.local_blend,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=cpu_generator(seed),
                return_attention=heatmaps,
                progress=progress,
            ))
    except ValueError as e:
        raise _as_user_error(e) from e
    return _outcome(pipe, results, plans, source, targets, heatmaps)


def edit_photo_p2p(
    pipe,
    image,
    source: str,
    targets,
    settings: P2PSettings,
    *,
    inversion: str = "null-text",
    steps: int = 50,
    guidance: float = 7.5,
    seed: int | None = 0,
    heatmaps: bool = True,
    keep_aspect: bool = False,
    cache: InversionCache | None = None,
    progress: bool = True,
) -> Outcome:
    """Invert a photo with its source prompt, then edit it into each target prompt (Prompt-to-Prompt)."""
    from .editing import edit_image

    if inversion not in INVERSION_METHODS:
        raise InputError(f"inversion must be one of {', '.join(INVERSION_METHODS)}, got {inversion!r}")
    source, targets = check_prompts(source, targets)
    plans = plan_p2p(settings, source, targets)
    steps, guidance = check_sampling(steps, guidance)
    photo = _load_photo(pipe, image, keep_aspect)
    key = ("p2p", image_key(photo), source, inversion, steps, guidance)
    cached = cache.get(key) if cache is not None else None
    reused = cached is not None
    results = []
    try:
        for plan in plans:
            result = edit_image(
                pipe,
                cached if cached is not None else photo,
                source,
                [targets[k] for k in plan.indices],
                edit=plan.edit,
                local_blend=plan.local_blend,
                inversion=inversion,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=cpu_generator(seed),
                return_attention=heatmaps,
                return_inversion=True,
                progress=progress,
                keep_aspect=keep_aspect,
            )
            results.append(result)
            if cached is None and result.inversion is not None:
                cached = result.inversion  # the next group reuses it
                if cache is not None:
                    cache.put(key, result.inversion)
    except ValueError as e:
        raise _as_user_error(e) from e
    return _outcome(pipe, results, plans, source, targets, heatmaps, inversion_reused=reused)


def edit_photo_pnp(
    pipe,
    image,
    targets,
    *,
    source: str = "",
    feature_threshold: float = 0.8,
    attention_threshold: float = 0.5,
    steps: int = 50,
    guidance: float = 7.5,
    seed: int | None = 0,
    keep_aspect: bool = False,
    cache: InversionCache | None = None,
    progress: bool = True,
) -> Outcome:
    """Edit a photo into each target prompt with Plug-and-Play (features and self-attention of its inversion)."""
    from .pnp import pnp_edit

    targets = [targets] if isinstance(targets, str) else list(targets)
    targets = [t.strip() for t in targets if t and t.strip()]
    if not targets:
        raise InputError("Enter a target prompt (what the edited image should show).")
    for name, value in (("feature", feature_threshold), ("attention", attention_threshold)):
        value = _finite(value, f"PnP {name} injection fraction")
        if not 0.0 <= value <= 1.0:
            raise InputError(f"PnP {name} injection fraction must be between 0 and 1, got {value}")
    steps, guidance = check_sampling(steps, guidance)
    photo = _load_photo(pipe, image, keep_aspect)
    source = (source or "").strip()
    key = ("pnp", image_key(photo), source, steps)
    cached = cache.get(key) if cache is not None else None
    try:
        result = pnp_edit(
            pipe,
            cached if cached is not None else photo,
            targets,
            source_prompt=source,
            pnp_f_t=float(feature_threshold),
            pnp_attn_t=float(attention_threshold),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=cpu_generator(seed),
            return_inversion=True,
            progress=progress,
            keep_aspect=keep_aspect,
        )
    except ValueError as e:
        raise _as_user_error(e) from e
    if cache is not None and cached is None and result.inversion is not None:
        cache.put(key, result.inversion)
    return Outcome(result.source, list(result.images), inversion_reused=cached is not None)
