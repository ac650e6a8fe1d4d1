"""Tiny diffusion pipelines built offline, for tests, benchmarks and demos without weights.

Nothing here downloads anything: the CLIP tokenizer's vocabulary and merges are written by
:func:`make_tokenizer`, the T5 tokenizer's unigram vocabulary by :func:`make_t5_tokenizer`, and every model is
built from a small config with random weights (seeded through a manual seed on a private RNG state, never the
global one).

Six flavours mirror the real families:

* ``"sd1"``: SD 1.x-like (``UNet2DConditionModel`` with conv projections in the transformers, epsilon
  prediction, one CLIP text encoder).
* ``"sd2"``: SD 2.x-like (linear projections, per-block head dims, v-prediction).
* ``"sdxl"``: SDXL-like (two text encoders, ``text_time`` added conditioning, no attention in the first
  down block).
* ``"sd3"``: Stable Diffusion 3-like (``SD3Transformer2DModel``: joint attention over [image | text] tokens,
  CLIP-L + CLIP-G + T5 text encoders, rectified-flow scheduler with shift 3), see :func:`tiny_sd3_pipeline`.
* ``"sd35"``: SD 3.5-medium-like (as ``"sd3"`` plus RMS query/key norms and dual-attention layers).
* ``"flux"``: FLUX.1-dev-like (``FluxTransformer2DModel``: double-stream blocks over [text | image] tokens,
  then single-stream blocks; CLIP + T5; guidance embedding; packed 2x2 latents; resolution-dependent shift),
  see :func:`tiny_flux_pipeline`.

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

FLAVOURS = ("sd1", "sd2", "sdxl")  # UNet families (tiny_unet)
FLOW_FLAVOURS = ("sd3", "sd35", "flux")  # rectified-flow transformer families


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


def _text_encoder(vocab_size: int, hidden: int, projection: bool, seed: int, num_hidden_layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=2,
        num_hidden_layers=num_hidden_layers,
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

    if flavour in ("sd3", "sd35"):
        return tiny_sd3_pipeline(folder=folder, seed=seed, variant=flavour)
    if flavour == "flux":
        return tiny_flux_pipeline(folder=folder, seed=seed)
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS + FLOW_FLAVOURS}")
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


# ---------------------------------------------------------------------------------------------------------
# Rectified-flow transformer pipelines (SD3 / SD3.5 / FLUX.1)
# ---------------------------------------------------------------------------------------------------------

T5_MAX_LENGTH = 512  # FLUX.1-dev's max_sequence_length; SD3 asks for 256 and gets that (the tokenizer pads to it)


def make_t5_tokenizer(folder: str | Path | None = None, words=TINY_WORDS, model_max_length: int = T5_MAX_LENGTH):
    """A T5 (unigram, SentencePiece-style) tokenizer in which every word of ``words`` is one piece, built offline.

    The vocabulary follows T5's layout (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, then pieces); a word is
    ``"▁word"`` (one token), anything else falls back to ``▁`` plus single characters, as SentencePiece does
    for rare words. Every sequence ends with ``</s>``. Saved to ``folder`` when given.
    """
    import string

    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{w}", -1.0) for w in words]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    backend = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")]
    )
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    from transformers import PreTrainedTokenizerFast

    try:  # transformers >= 5: T5Tokenizer is the tokenizers-backed class
        from transformers import T5TokenizerFast as cls
    except ImportError:
        from transformers import T5Tokenizer as cls
    kwargs = dict(eos_token="</s>", unk_token="<unk>", pad_token="<pad>", model_max_length=model_max_length)
    if issubclass(cls, PreTrainedTokenizerFast):
        tokenizer = cls(tokenizer_object=backend, extra_ids=0, **kwargs)
    else:  # the transformers 5 constructor builds the backend from (piece, score) pairs itself
        tokenizer = cls(vocab=pieces, extra_ids=0, **kwargs)
    if folder is not None:
        tokenizer.save_pretrained(Path(folder))
    return tokenizer


def _t5_encoder(vocab_size: int, d_model: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=16,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as in SD3 and FLUX.1
        pad_token_id=0,
        eos_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5EncoderModel(config).eval()


def _flow_vae(seed: int, latent_channels: int, shift_factor: float, scaling_factor: float):
    """A tiny ``AutoencoderKL`` shaped like SD3's / FLUX's (no quant convs, a shift and a scale)."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            block_out_channels=(8, 16),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=latent_channels,
            norm_num_groups=8,
            sample_size=32,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=shift_factor,
            scaling_factor=scaling_factor,
        ).eval()


def tiny_sd3_transformer(seed: int = 0, variant: str = "sd3", num_layers: int = 3):
    """A tiny ``SD3Transformer2DModel``: 4 heads of 8, patch 2, joint attention over [image | text].

    ``variant="sd35"`` adds SD 3.5-medium's RMS query/key norms and a dual-attention first layer. The text
    width (``joint_attention_dim`` 96) is the tiny T5's, the pooled width (80) CLIP-L's 32 + CLIP-G's 48, as
    on the real model (4096; 768 + 1280).
    """
    from diffusers import SD3Transformer2DModel

    if variant not in ("sd3", "sd35"):
        raise ValueError(f"unknown SD3 variant {variant!r}; expected 'sd3' or 'sd35'")
    extra = dict(qk_norm="rms_norm", dual_attention_layers=(0,)) if variant == "sd35" else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=num_layers,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=96,
            caption_projection_dim=32,
            pooled_projection_dim=80,
            pos_embed_max_size=32,
            **extra,
        ).eval()


def tiny_flux_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2):
    """A tiny ``FluxTransformer2DModel`` (FLUX.1-dev-like: guidance embedding, RoPE over 3 axes).

    Latents are 4-channel and packed 2x2 (16 input channels; FLUX.1: 16 and 64). 2 heads of 16 with RoPE axes
    (4, 4, 8); text width 96 (the tiny T5's), pooled width 32 (the tiny CLIP's).
    """
    from diffusers import FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=num_layers,
            num_single_layers=num_single_layers,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=96,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        ).eval()


def tiny_sd3_pipeline(folder: str | Path | None = None, seed: int = 0, variant: str = "sd3"):
    """A tiny ``StableDiffusion3Pipeline`` built offline (random weights, local tokenizers).

    Components as on SD3 / SD3.5: CLIP-L and CLIP-G (``CLIPTextModelWithProjection``, hidden 32 and 48), T5
    (d_model 96), a 4-channel VAE with SD3's shift / scale, and ``FlowMatchEulerDiscreteScheduler(shift=3.0)``.
    The VAE downsamples by 2, so a 32 px image is a 16 x 16 latent and 8 x 8 = 64 image tokens.

    Args:
        folder: where the tokenizer files go (a temporary folder when omitted).
        seed: seeds every component (each from its own offset).
        variant: ``"sd3"`` or ``"sd35"`` (see :func:`tiny_sd3_transformer`).
    """
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    folder = Path(folder if folder is not None else tempfile.mkdtemp(prefix="editkit-tiny-sd3-"))
    clip_tokenizer = make_tokenizer(folder / "tokenizer")
    t5_tokenizer = make_t5_tokenizer(folder / "tokenizer_3")
    vocab = len(clip_tokenizer)
    return StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(seed=seed, variant=variant),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_flow_vae(seed + 1, latent_channels=4, shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=_text_encoder(vocab, 32, projection=True, seed=seed + 2),
        tokenizer=clip_tokenizer,
        text_encoder_2=_text_encoder(vocab, 48, projection=True, seed=seed + 3),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=_t5_encoder(len(t5_tokenizer), 96, seed=seed + 4),
        tokenizer_3=t5_tokenizer,
    )


def tiny_flux_pipeline(folder: str | Path | None = None, seed: int = 0):
    """A tiny ``FluxPipeline`` (FLUX.1-dev-like) built offline (random weights, local tokenizers).

    Components as on FLUX.1: CLIP (``CLIPTextModel``, hidden 32, its pooled output conditions the model), T5
    (d_model 96), a 4-channel VAE with FLUX's shift / scale, and FLUX.1-dev's scheduler configuration
    (resolution-dependent shift between 0.5 and 1.15). The VAE downsamples by 2 and latents are packed 2 x 2,
    so a 32 px image is 8 x 8 = 64 image tokens.
    """
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    folder = Path(folder if folder is not None else tempfile.mkdtemp(prefix="editkit-tiny-flux-"))
    clip_tokenizer = make_tokenizer(folder / "tokenizer")
    t5_tokenizer = make_t5_tokenizer(folder / "tokenizer_2")
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        transformer=tiny_flux_transformer(seed=seed),
        scheduler=scheduler,
        vae=_flow_vae(seed + 1, latent_channels=4, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=_text_encoder(len(clip_tokenizer), 32, projection=False, seed=seed + 2),
        tokenizer=clip_tokenizer,
        text_encoder_2=_t5_encoder(len(t5_tokenizer), 96, seed=seed + 3),
        tokenizer_2=t5_tokenizer,
    )
