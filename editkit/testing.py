"""Tiny Stable Diffusion pipelines built offline, for tests, benchmarks and demos without weights.

Nothing here downloads anything: the tokenizer's vocabulary and merges are written by :func:`make_tokenizer`,
and every model is built from a small config with random weights (seeded through an explicit
``torch.Generator``-style manual seed on a private RNG state, never the global one).

Three flavours mirror the real families:

* ``"sd1"``: SD 1.x-like (``UNet2DConditionModel`` with conv projections in the transformers, epsilon
  prediction, one CLIP text encoder).
* ``"sd2"``: SD 2.x-like (linear projections, per-block head dims, v-prediction).
* ``"sdxl"``: SDXL-like (two text encoders, ``text_time`` added conditioning, no attention in the first
  down block).

:func:`save_tiny_pipeline` writes one to a folder in diffusers' layout, so tests go through the same
loading code as users (:func:`editkit.load_pipeline`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Words that become single tokens in the tiny vocabulary. Anything else is split into characters, which
# exercises the multi-token-word paths of the word-index helpers.
TINY_WORDS = (
    "a an the of on in with and photo painting watercolor oil sketch cat dog car bicycle riding sitting "
    "red blue green yellow house tree river mountain forest city street man woman smiling sad apple bowl "
    "table lion tiger squirrel eating burger cake pizza sushi drawing cartoon snowy sunny castle"
).split()

FLAVOURS = ("sd1", "sd2", "sdxl")


def _bytes_to_unicode() -> dict[int, str]:
    # The reversible byte -> printable character table used by GPT-2 / CLIP BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def make_tokenizer(folder: str | Path, words=TINY_WORDS, model_max_length: int = 77):
    """Write a CLIP BPE vocabulary in which every word of ``words`` is one token, and load it.

    The merges build each word left to right (``c a`` -> ``ca``, ``ca t</w>`` -> ``cat</w>``), so the
    tokenizer behaves like CLIP's on these words and falls back to characters elsewhere.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    seen = set(vocab)
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merged = left + right
            if (left, right) not in merges:
                merges.append((left, right))
            if merged not in seen:
                vocab.append(merged)
                seen.add(merged)
            left = merged
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def _text_encoder(vocab_size: int, hidden: int, projection: bool, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=77,
        vocab_size=vocab_size,
        projection_dim=hidden,
        hidden_act="gelu",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        return cls(config).eval()


def tiny_unet(flavour: str = "sd1", seed: int = 0, block_out_channels=None, cross_attention_dim=None):
    """A tiny ``UNet2DConditionModel`` of the given flavour (random weights, deterministic in ``seed``).

    The block structure is that of the real family (SD 1.x/2.x: four blocks, attention in the first three
    down blocks, the mid block and the last three up blocks; SDXL: three blocks, no attention in the
    first), so the layer choices made relative to the latent size meet the same layers as on the real
    models, only with few channels.
    """
    from diffusers import UNet2DConditionModel

    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    if block_out_channels is None:
        block_out_channels = (16, 32, 32) if flavour == "sdxl" else (16, 16, 32, 32)
    n = len(block_out_channels)
    common = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=tuple(block_out_channels),
        norm_num_groups=8,
    )
    if flavour == "sd1":
        cfg = dict(
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=cross_attention_dim or 32,
            attention_head_dim=4,
        )
    elif flavour == "sd2":
        cfg = dict(
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=cross_attention_dim or 32,
            attention_head_dim=tuple([2, 4, 8, 8][:n]),
            use_linear_projection=True,
        )
    else:
        cfg = dict(
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            cross_attention_dim=cross_attention_dim or 64,
            attention_head_dim=tuple([2, 4, 8, 8][:n]),
            use_linear_projection=True,
            transformer_layers_per_block=tuple([1, 2, 2, 2][:n]),
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + 32,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**common, **cfg).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            block_out_channels=(8, 16),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
        ).eval()


def tiny_scheduler(flavour: str = "sd1"):
    """The DDIM scheduler of Stable Diffusion (the configuration Prompt-to-Prompt uses)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if flavour == "sd2" else "epsilon",
    )


def tiny_pipeline(flavour: str = "sd1", folder: str | Path | None = None, seed: int = 0):
    """Build a tiny diffusers pipeline of the given flavour, offline.

    ``folder`` is where the generated tokenizer files go (a temporary folder is used when omitted).
    """
    import tempfile

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if folder is None:
        folder = tempfile.mkdtemp(prefix="editkit-tiny-")
    folder = Path(folder)
    tokenizer = make_tokenizer(folder / "tokenizer")
    vocab_size = len(tokenizer)
    unet = tiny_unet(flavour, seed=seed)
    vae = tiny_vae(seed=seed + 1)
    scheduler = tiny_scheduler(flavour)
    if flavour == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=_text_encoder(vocab_size, 32, projection=False, seed=seed + 2),
            text_encoder_2=_text_encoder(vocab_size, 32, projection=True, seed=seed + 3),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=_text_encoder(vocab_size, 32, projection=False, seed=seed + 2),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(folder: str | Path, flavour: str = "sd1", seed: int = 0) -> Path:
    """Build a tiny pipeline and save it in diffusers' folder layout (safetensors weights)."""
    folder = Path(folder)
    pipe = tiny_pipeline(flavour, folder=folder / "_tokenizer_src", seed=seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
