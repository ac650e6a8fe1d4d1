"""Bad-input catalogue of the editkit library: every row is a hostile or unlucky input, the exception it
must raise, a message naming the problem, and (for the resource cases) a bound on the time it may take.

Rows cover crafted inversion files, huge images, NaN / infinite numbers, words past the text
encoder's 77 tokens, and more of the same families.
"""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image

from editkit import p2p
from editkit.editing import edit_image
from editkit.image import MAX_PIXELS, load_image
from editkit.inversion import Inversion, invert, reconstruct
from editkit.pnp import pnp_edit
from tests.helpers import png_header_only

SOURCE, TARGET = "a cat riding a bicycle", "a cat riding a car"
GEN = dict(height=32, width=32, num_inference_steps=2, progress=False)
NAN, INF = float("nan"), float("inf")
# 80 one-token words push the last word past CLIP's 77 tokens (start token + 75 words + end token)
LONG = "a " * 80
FAST = 10.0  # s: a refusal must come before any real work (generous for a loaded 2-core machine)


def inversion(latents, steps, method="ddim", guidance=7.5, uncond=None):
    return Inversion(
        latents=latents,
        prompt=SOURCE,
        num_inference_steps=steps,
        guidance_scale=guidance,
        method=method,
        uncond_embeddings=uncond,
    )


def saved(tmp_path, inv, **meta_overrides):
    """Save ``inv``, then rewrite its metadata (what a crafted file could say)."""
    from safetensors.torch import load_file, save_file

    path = inv.save(tmp_path / "crafted.safetensors")
    if meta_overrides:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata())
        save_file(load_file(str(path)), str(path), metadata={**meta, **meta_overrides})
    return path


# --- Inversion files ----------------------------------------------------------------------------------------
def _wide(tmp_path, sd1):  # the crafted file: 3 steps over a 8 x 2000 latent (565 s before)
    return reconstruct(
        sd1, Inversion.load(saved(tmp_path, inversion(torch.zeros(4, 4, 8, 2000), 3))), progress=False
    )


def _nan_latents(tmp_path, sd1):
    lat = torch.zeros(3, 4, 8, 8)
    lat[1, 0, 0, 0] = NAN
    return Inversion.load(saved(tmp_path, inversion(lat, 2)))


def _inf_uncond(tmp_path, sd1):
    un = torch.zeros(2, 77, 32)
    un[0, 0, 0] = INF
    return Inversion.load(saved(tmp_path, inversion(torch.zeros(3, 4, 8, 8), 2, "null-text", uncond=un)))


def _absurd_steps(tmp_path, sd1):
    return Inversion.load(
        saved(tmp_path, inversion(torch.zeros(3, 4, 8, 8), 2), num_inference_steps="1000000")
    )


def _steps_mismatch(tmp_path, sd1):
    return Inversion.load(saved(tmp_path, inversion(torch.zeros(3, 4, 8, 8), 2), num_inference_steps="40"))


def _unknown_method(tmp_path, sd1):
    return Inversion.load(saved(tmp_path, inversion(torch.zeros(3, 4, 8, 8), 2), method="magic"))


def _nan_guidance_meta(tmp_path, sd1):
    return Inversion.load(saved(tmp_path, inversion(torch.zeros(3, 4, 8, 8), 2), guidance_scale="nan"))


def _wrong_channels(tmp_path, sd1):
    return reconstruct(
        sd1, Inversion.load(saved(tmp_path, inversion(torch.zeros(3, 8, 8, 8), 2))), progress=False
    )


def _odd_latent(tmp_path, sd1):  # 8 x 9 latent: the UNet's downsamplers need multiples of 8 here
    return reconstruct(
        sd1, Inversion.load(saved(tmp_path, inversion(torch.zeros(3, 4, 8, 9), 2))), progress=False
    )


def _uncond_wrong_width(tmp_path, sd1):
    inv = Inversion.load(
        saved(tmp_path, inversion(torch.zeros(3, 4, 8, 8), 2, "null-text", uncond=torch.zeros(2, 77, 99)))
    )
    return edit_image(sd1, inv, SOURCE, [TARGET], p2p.Replace(), progress=False)


def _nan_in_memory_inversion(tmp_path, sd1):
    return reconstruct(sd1, inversion(torch.full((3, 4, 8, 8), NAN), 2), progress=False)


# --- Images ------------------------------------------------------------------------------------------------
def _image_10k(tmp_path, sd1):
    return load_image(png_header_only(tmp_path / "huge10k.png", 10_000, 10_000))


def _image_20k(tmp_path, sd1):
    return invert(
        sd1, png_header_only(tmp_path / "huge20k.png", 20_000, 20_000), SOURCE, "ddim", 2, progress=False
    )


def _image_truncated(tmp_path, sd1):
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    return load_image(tmp_path / "cut.png")


def _image_over_custom_limit(tmp_path, sd1):
    Image.new("RGB", (64, 64)).save(tmp_path / "small.png")
    return load_image(tmp_path / "small.png", max_pixels=32 * 32)


def _pil_image_over_limit(tmp_path, sd1):
    return load_image(Image.new("L", (300, 300)), max_pixels=200 * 200)


# --- Non-finite numbers ---------------------------------------------------------------------------------------
def _generate_guidance(value):
    return lambda tmp_path, sd1: p2p.generate(
        sd1, SOURCE, [TARGET], p2p.Replace(), guidance_scale=value, **GEN
    )


def _invert_guidance(tmp_path, sd1):
    return invert(
        sd1, Image.new("RGB", (32, 32)), SOURCE, "null-text", 2, guidance_scale=NAN, size=32, progress=False
    )


def _edit_image_guidance(tmp_path, sd1):
    return edit_image(
        sd1,
        Image.new("RGB", (32, 32)),
        SOURCE,
        [TARGET],
        p2p.Replace(),
        inversion="direct",
        num_inference_steps=2,
        guidance_scale=INF,
        size=32,
        progress=False,
    )


def _pnp_guidance(tmp_path, sd1):
    return pnp_edit(
        sd1,
        Image.new("RGB", (32, 32)),
        "a dog",
        guidance_scale=NAN,
        num_inference_steps=2,
        size=32,
        progress=False,
    )


def _reconstruct_guidance(tmp_path, sd1):
    return reconstruct(sd1, inversion(torch.zeros(3, 4, 8, 8), 2), guidance_scale=INF, progress=False)


def _reweight(value):
    return lambda tmp_path, sd1: p2p.generate(
        sd1, SOURCE, [TARGET], p2p.Reweight({"car": value}, base=p2p.Replace()), **GEN
    )


def _nan_latents_in(tmp_path, sd1):
    return p2p.generate(sd1, SOURCE, [TARGET], p2p.Replace(), latents=torch.full((1, 4, 16, 16), NAN), **GEN)


# --- Words past the text encoder's 77 tokens ------------------------------------------------------------------
def _replace_late(tmp_path, sd1):
    return p2p.generate(sd1, LONG + "cat", [LONG + "dog"], p2p.Replace(), **GEN)


def _refine_late(tmp_path, sd1):
    return p2p.generate(sd1, LONG + "cat", [LONG + "red cat"], p2p.Refine(), **GEN)


def _reweight_late(tmp_path, sd1):
    return p2p.generate(sd1, LONG + "cat", [LONG + "dog"], p2p.Reweight({"dog": 2.0}), **GEN)


def _blend_late(tmp_path, sd1):
    return p2p.generate(sd1, LONG + "cat", [LONG + "dog"], local_blend=p2p.LocalBlend(["cat", "dog"]), **GEN)


def _cross_steps_late(tmp_path, sd1):
    return p2p.generate(
        sd1, LONG + "cat", [LONG + "dog"], p2p.Replace(cross_replace_steps={"dog": 0.5}), **GEN
    )


CASES = [
    # (id, call, exception, message pattern, time bound in s)
    (
        "inversion-latent-8x2000",
        _wide,
        ValueError,
        r"crafted.safetensors: a 8x2000 latent .* at most 64",
        FAST,
    ),
    (
        "inversion-nan-latents",
        _nan_latents,
        ValueError,
        r"crafted.safetensors: the tensor 'latents' holds NaN",
        FAST,
    ),
    (
        "inversion-inf-null-text",
        _inf_uncond,
        ValueError,
        r"crafted.safetensors: the tensor 'uncond_embeddings' holds NaN or infinite",
        FAST,
    ),
    (
        "inversion-absurd-steps",
        _absurd_steps,
        ValueError,
        r"crafted.safetensors: num_inference_steps 1000000 is outside \[1, 1000\]",
        FAST,
    ),
    (
        "inversion-steps-mismatch",
        _steps_mismatch,
        ValueError,
        r"crafted.safetensors: latents of shape \[3, 4, 8, 8\] do not fit 40 steps",
        FAST,
    ),
    (
        "inversion-unknown-method",
        _unknown_method,
        ValueError,
        r"crafted.safetensors: unknown inversion method 'magic'",
        FAST,
    ),
    (
        "inversion-nan-guidance",
        _nan_guidance_meta,
        ValueError,
        r"crafted.safetensors: guidance_scale nan",
        FAST,
    ),
    (
        "inversion-wrong-channels",
        _wrong_channels,
        ValueError,
        r"crafted.safetensors: latents \(3, 8, 8, 8\) do not fit .*4 latent channels",
        FAST,
    ),
    (
        "inversion-odd-latent",
        _odd_latent,
        ValueError,
        r"crafted.safetensors: a 8x9 latent .* multiple of 8",
        FAST,
    ),
    (
        "inversion-null-text-width",
        _uncond_wrong_width,
        ValueError,
        r"crafted.safetensors: null-text embeddings \(2, 77, 99\)",
        FAST,
    ),
    (
        "inversion-nan-in-memory",
        _nan_in_memory_inversion,
        ValueError,
        r"the inversion: latents hold NaN",
        FAST,
    ),
    (
        "image-10k-header",
        _image_10k,
        ValueError,
        r"huge10k.png is 10000x10000 px .* limit of 67,108,864",
        3.0,
    ),
    ("image-20k-header", _image_20k, ValueError, r"huge20k.png .*(limit|decompression bomb)", 3.0),
    ("image-truncated", _image_truncated, ValueError, r"cut.png", FAST),
    (
        "image-custom-limit",
        _image_over_custom_limit,
        ValueError,
        r"small.png is 64x64 px .* limit of 1,024",
        FAST,
    ),
    ("image-pil-over-limit", _pil_image_over_limit, ValueError, r"300x300 px .* limit of 40,000", FAST),
    (
        "generate-guidance-nan",
        _generate_guidance(NAN),
        ValueError,
        r"guidance_scale must be a finite number >= 1, got nan",
        FAST,
    ),
    (
        "generate-guidance-inf",
        _generate_guidance(INF),
        ValueError,
        r"guidance_scale must be a finite number >= 1, got inf",
        FAST,
    ),
    (
        "generate-guidance-below-1",
        _generate_guidance(0.5),
        ValueError,
        r"guidance_scale must be a finite number >= 1",
        FAST,
    ),
    ("invert-guidance-nan", _invert_guidance, ValueError, r"guidance_scale must be a finite number", FAST),
    (
        "edit-image-guidance-inf",
        _edit_image_guidance,
        ValueError,
        r"guidance_scale must be a finite number",
        FAST,
    ),
    (
        "pnp-guidance-nan",
        _pnp_guidance,
        ValueError,
        r"guidance_scale must be a finite number >= 1, got nan",
        FAST,
    ),
    (
        "reconstruct-guidance-inf",
        _reconstruct_guidance,
        ValueError,
        r"guidance_scale must be a finite number",
        FAST,
    ),
    (
        "reweight-nan",
        _reweight(NAN),
        ValueError,
        r"the weight of 'car' must be a finite number, got nan",
        FAST,
    ),
    (
        "reweight-inf",
        _reweight(INF),
        ValueError,
        r"the weight of 'car' must be a finite number, got inf",
        FAST,
    ),
    ("generate-nan-latents", _nan_latents_in, ValueError, r"latents hold NaN", FAST),
    ("replace-word-after-77", _replace_late, ValueError, r"the word 'cat' .* limit of 77 tokens", FAST),
    ("refine-prompt-over-77", _refine_late, ValueError, r"longer than the text encoder's limit of 77", FAST),
    ("reweight-word-after-77", _reweight_late, ValueError, r"the word 'dog' .* limit of 77 tokens", FAST),
    ("local-blend-word-after-77", _blend_late, ValueError, r"the word 'cat' .* limit of 77 tokens", FAST),
    (
        "cross-steps-word-after-77",
        _cross_steps_late,
        ValueError,
        r"the word 'dog' .* limit of 77 tokens",
        FAST,
    ),
]


@pytest.mark.parametrize(
    ("call", "exc", "pattern", "seconds"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused(tmp_path, sd1, call, exc, pattern, seconds):
    t0 = time.perf_counter()
    with pytest.raises(exc, match=pattern):
        call(tmp_path, sd1)
    assert time.perf_counter() - t0 < seconds


def test_limits_are_documented_constants():
    import editkit.image
    import editkit.inversion

    assert MAX_PIXELS == 8192 * 8192 and "MAX_PIXELS" in editkit.image.__doc__
    assert editkit.inversion.MAX_LATENT_FACTOR == 4 and editkit.inversion.MAX_STEPS == 1000


def test_word_just_inside_the_limit_still_works(sd1):
    # position 75 is the last the encoder keeps (start token + 75 tokens + end token): still an edit
    prompt, target = "a " * 74 + "cat", "a " * 74 + "dog"
    out = p2p.generate(sd1, prompt, [target], p2p.Replace(), output_type="pt", **GEN)
    assert torch.isfinite(out.latents).all()


@pytest.mark.parametrize("command, batch", [("edit", False), ("edit", True), ("generate", False)],
                         ids=["edit", "edit-summary", "generate"])
def test_a_missing_model_leaves_no_output_folder(tmp_path, capsys, command, batch):
    """The command refuses a model that is not there (exit code 3) before it makes the --output folder."""
    from editkit.cli import EXIT_MODEL_NOT_FOUND, main

    photo = tmp_path / "cat.png"
    Image.new("RGB", (16, 16), (200, 100, 50)).save(photo)
    out, summary = tmp_path / "out" / "sub", tmp_path / "report" / "summary.json"
    argv = [command, *([str(photo)] if command == "edit" else []), "--source", "a cat", "--target", "a dog",
            "--model", str(tmp_path / "no-model"), "--output", str(out), "--quiet", "--steps", "2"]
    assert main(argv + (["--summary", str(summary)] if batch else [])) == EXIT_MODEL_NOT_FOUND
    err = capsys.readouterr().err
    assert "no file or folder" in err and "no-model" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png"]  # no out/, out/sub/ or report/


def test_an_unwritable_output_is_still_refused_before_the_model(tmp_path, capsys):
    from editkit.cli import EXIT_USAGE, main

    (tmp_path / "a-file").write_text("in the way")
    argv = ["generate", "--source", "a cat", "--target", "a dog", "--model", str(tmp_path / "no-model"), "--quiet"]
    assert main([*argv, "--output", str(tmp_path / "a-file" / "out" / "deeper")]) == EXIT_USAGE
    assert "cannot be written: Not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("side, words", [(10_000, "10000x10000 px"), (20_000, "decompression bomb")])
def test_flow_photo_over_the_limit_is_refused_in_words(tmp_path, side, words):
    """SD3 / FLUX from Python: a photo whose header is over the limit gets editkit's refusal, naming the file,
    before anything is decoded; PIL's warning never reaches the user (pyproject turns it into an error)."""
    from editkit.flow.edit import FlowSettings, edit_photo

    from ._flow_common import tiny

    path = png_header_only(tmp_path / f"huge{side}.png", side, side)
    with pytest.raises(ValueError, match=rf"huge{side}\.png.*{words}"):
        edit_photo(tiny("sd3"), path, "a cat", ["a dog"], FlowSettings(steps=2))
