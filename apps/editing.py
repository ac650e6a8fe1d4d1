"""The one place where user-level settings become editkit calls; shared by the Gradio UI and the CLI.

Nothing here imports Gradio. Settings arrive as plain values (strings from text boxes or flags, numbers from
sliders), are checked, turned into editkit's edit objects, and run through the engine. Every problem the user
can fix (an empty prompt, a word that is not in the prompt, a word swap whose prompts differ in length) ends
as an :class:`InputError` (a ``ValueError``) with a message meant to be shown as is.

Inversions of real photos are expensive (null-text inversion optimises one embedding per step), so they are
kept in an :class:`InversionCache` keyed on the image's content hash and every parameter the inversion
depends on; a second edit of the same photo with only the target prompt changed reuses it. The caller owns
the cache: the UI keeps one per browser session (``gr.State``), the CLI one per run.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass, field

EDIT_KINDS = ("replace", "refine")
INVERSION_METHODS = ("null-text", "negative-prompt", "ddim", "direct")


class InputError(ValueError):
    """Something the user typed or chose cannot be run; the message says what and how to fix it."""


@dataclass
class P2PSettings:
    """How the target prompts edit the source image (Prompt-to-Prompt)."""

    kind: str = "replace"  # "replace": word swap (same number of words); "refine": add or change words
    cross_replace: float = 0.8  # fraction of the steps in which the source's cross-attention maps are injected
    self_replace: float = 0.4  # fraction of the steps in which the source's self-attention maps are injected
    reweight: dict[str, float] = field(default_factory=dict)  # word -> attention scale (1 = unchanged)
    blend_source: list[str] = field(default_factory=list)  # local blend: words of the source prompt to edit
    blend_target: list[str] = field(default_factory=list)  # local blend: words of the target prompt(s)


@dataclass
class Outcome:
    """What one edit produced, ready to be shown or written."""

    source: object  # PIL image: the generated or reconstructed source
    targets: list  # PIL images, one per target prompt
    heatmaps: list = field(default_factory=list)  # (caption, PIL image) pairs, per-token attention maps
    inversion_reused: bool | None = None  # photos only: True when the cached inversion was used
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# Parsing and checking user input


def words_of(text: str) -> list[str]:
    """Split a comma- or space-separated list of words: ``"cat, dog"`` -> ``["cat", "dog"]``."""
    return [w for w in re.split(r"[,\s]+", text or "") if w]


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
            try:
                scale = float(value)
            except ValueError:
                raise InputError(f"re-weighting {item!r}: {value!r} is not a number") from None
        else:
            word, scale = item
        word = (word or "").strip()
        if word:
            out[word] = float(scale)
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
# Settings -> editkit objects


def make_edit(settings: P2PSettings, source: str, targets: list[str]):
    """Build ``(edit, local_blend)`` for :func:`editkit.p2p.generate` / :func:`editkit.inversion.edit_image`."""
    from editkit import p2p

    if settings.kind not in EDIT_KINDS:
        raise InputError(f"edit must be one of {EDIT_KINDS}, got {settings.kind!r}")
    for name, value in (("cross replace", settings.cross_replace), ("self replace", settings.self_replace)):
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
    base_cls = p2p.Replace if settings.kind == "replace" else p2p.Refine
    schedule = dict(cross_replace_steps=settings.cross_replace, self_replace_steps=settings.self_replace)
    if settings.reweight:
        check_words_in(settings.reweight, targets, "re-weighting")
        edit = p2p.Reweight(weights=dict(settings.reweight), base=base_cls(**schedule), **schedule)
    else:
        edit = base_cls(**schedule)
    local_blend = None
    if settings.blend_source or settings.blend_target:
        src = list(settings.blend_source or settings.blend_target)
        tgt = list(settings.blend_target or settings.blend_source)
        check_words_in(src, [source], "local blend (source words)")
        check_words_in(tgt, targets, "local blend (target words)")
        local_blend = p2p.LocalBlend(words=[src] + [tgt] * len(targets))
    return edit, local_blend


def cpu_generator(seed: int | None):
    import torch

    return None if seed is None else torch.Generator("cpu").manual_seed(int(seed))


def default_size(pipe) -> int:
    """The resolution the model was trained at (512 for SD 1.x, 768 for SD 2.x, 1024 for SDXL)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def _heatmaps(pipe, result, prompts: list[str], labels: list[str]):
    """One grid per prompt: the cross-attention of each of its tokens, over the image of that prompt."""
    from editkit import p2p

    if result.attention is None:
        return []
    images = [result.source, *result.targets]
    return [
        (
            f"{label}: {prompt}",
            p2p.cross_attention_grid(result.attention, pipe.tokenizer, prompt, prompt_index=i, image=images[i],
                                     size=128),
        )
        for i, (label, prompt) in enumerate(zip(labels, prompts, strict=True))
    ]


def _labels(n_targets: int) -> list[str]:
    return ["source"] + (["target"] if n_targets == 1 else [f"target {k + 1}" for k in range(n_targets)])


def _as_user_error(e: ValueError) -> InputError:
    return e if isinstance(e, InputError) else InputError(str(e))


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
    from editkit import p2p

    source, targets = check_prompts(source, targets)
    edit, local_blend = make_edit(settings, source, targets)
    try:
        result = p2p.generate(
            pipe,
            source,
            targets,
            edit=edit,
            local_blend=local_blend,
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            generator=cpu_generator(seed),
            return_attention=heatmaps,
            progress=progress,
        )
    except ValueError as e:
        raise _as_user_error(e) from e
    maps = _heatmaps(pipe, result, [source, *targets], _labels(len(targets))) if heatmaps else []
    return Outcome(result.source, list(result.targets), maps)


def _load_photo(pipe, image):
    from editkit.image import load_image, model_multiple

    if image is None:
        raise InputError("Upload a photo to edit.")
    try:
        return load_image(image, size=default_size(pipe), multiple=model_multiple(pipe))
    except (OSError, ValueError) as e:
        raise InputError(f"could not read the image: {e}") from e


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
    cache: InversionCache | None = None,
    progress: bool = True,
) -> Outcome:
    """Invert a photo with its source prompt, then edit it into each target prompt (Prompt-to-Prompt)."""
    from editkit.inversion import edit_image

    if inversion not in INVERSION_METHODS:
        raise InputError(f"inversion must be one of {INVERSION_METHODS}, got {inversion!r}")
    photo = _load_photo(pipe, image)
    source, targets = check_prompts(source, targets)
    edit, local_blend = make_edit(settings, source, targets)
    key = ("p2p", image_key(photo), source, inversion, int(steps), float(guidance))
    cached = cache.get(key) if cache is not None else None
    try:
        result = edit_image(
            pipe,
            cached if cached is not None else photo,
            source,
            targets,
            edit=edit,
            local_blend=local_blend,
            inversion=inversion,
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            generator=cpu_generator(seed),
            return_attention=heatmaps,
            return_inversion=True,
            progress=progress,
        )
    except ValueError as e:
        raise _as_user_error(e) from e
    if cache is not None and cached is None and result.inversion is not None:
        cache.put(key, result.inversion)
    maps = _heatmaps(pipe, result, [source, *targets], _labels(len(targets))) if heatmaps else []
    return Outcome(result.source, list(result.targets), maps, inversion_reused=cached is not None)


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
    cache: InversionCache | None = None,
    progress: bool = True,
) -> Outcome:
    """Edit a photo into each target prompt with Plug-and-Play (features and self-attention of its inversion)."""
    from editkit.pnp import pnp_edit

    photo = _load_photo(pipe, image)
    targets = [targets] if isinstance(targets, str) else list(targets)
    targets = [t.strip() for t in targets if t and t.strip()]
    if not targets:
        raise InputError("Enter a target prompt (what the edited image should show).")
    for name, value in (("feature", feature_threshold), ("attention", attention_threshold)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"PnP {name} injection fraction must be between 0 and 1, got {value}")
    source = (source or "").strip()
    key = ("pnp", image_key(photo), source, int(steps))
    cached = cache.get(key) if cache is not None else None
    try:
        result = pnp_edit(
            pipe,
            cached if cached is not None else photo,
            targets,
            source_prompt=source,
            pnp_f_t=float(feature_threshold),
            pnp_attn_t=float(attention_threshold),
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            generator=cpu_generator(seed),
            return_inversion=True,
            progress=progress,
        )
    except ValueError as e:
        raise _as_user_error(e) from e
    if cache is not None and cached is None and result.inversion is not None:
        cache.put(key, result.inversion)
    return Outcome(result.source, list(result.images), [], inversion_reused=cached is not None)
