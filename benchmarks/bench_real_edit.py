"""Benchmark: end-to-end real-image editing (inversion + edit) per inversion method and Plug-and-Play,
against one plain generation with the same number of steps, with peak memory.

    python benchmarks/bench_real_edit.py                 # CPU: tiny offline SD1 model, 10 steps, 32 px
    python benchmarks/bench_real_edit.py --steps 20
    python benchmarks/bench_real_edit.py --full          # GPU: SD 1.5 UNet architecture, random weights,
                                                         # fp16, 512 px, 50 steps (no weights needed)

Every row runs once after a warm-up; the ratio column is time / plain generation time.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Stable Diffusion 1.5's UNet config (runwayml/stable-diffusion-v1-5, unet/config.json).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
# Its VAE (vae/config.json).
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    sample_size=512,
)


def build_pipeline(full: bool):
    from editkit import load_pipeline
    from editkit.testing import tiny_pipeline

    if not full:
        return load_pipeline(tiny_pipeline("sd1"), device="cpu")
    import tempfile

    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from editkit.testing import make_tokenizer, tiny_scheduler

    tokenizer = make_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    text = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14 text tower shape, random weights
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=12, max_position_embeddings=77, bos_token_id=len(tokenizer) - 2,
        eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1, hidden_act="quick_gelu"))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=text, tokenizer=tokenizer, unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=tiny_scheduler("sd1"), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with torch.no_grad():  # smooth the random ε so the inversion is well behaved (timing is unaffected)
        pipe.unet.conv_in.weight.mul_(1e-3)
    return load_pipeline(pipe, device="cuda", dtype=torch.float16)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process high-water mark (Linux: KiB)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, peak_memory_mb(device), out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="SD 1.5-sized UNet on CUDA, fp16, 512 px")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 10 on CPU, 50 with --full)")
    parser.add_argument("--inner-steps", type=int, default=10, help="null-text Adam iterations per step")
    args = parser.parse_args(argv)
    if args.full and not torch.cuda.is_available():
        parser.error("--full needs a CUDA device")
    steps = args.steps or (50 if args.full else 10)

    import numpy as np
    from PIL import Image

    from editkit.inversion import edit_image, invert
    from editkit.p2p import Replace, generate
    from editkit.pnp import pnp_edit
    from editkit.sampling import default_size

    pipe = build_pipeline(args.full)
    device = pipe._execution_device
    size = default_size(pipe)[0]
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    src, tgt = "a photo of a cat", "a photo of a dog"
    edit = Replace(cross_replace_steps=0.8, self_replace_steps=0.4)

    def plain():
        return generate(pipe, src, [], num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0), progress=False)

    def p2p_real(method):
        def run():
            inv = invert(pipe, photo, src, method, steps, num_inner_steps=args.inner_steps, progress=False)
            return edit_image(pipe, inv, src, [tgt], edit=edit, progress=False)
        return run

    def pnp():
        return pnp_edit(pipe, photo, tgt, num_inference_steps=steps, progress=False)

    plain()  # warm-up
    rows = [("plain generation (1 prompt)", plain)]
    rows += [(f"P2P real edit, {m} inversion", p2p_real(m)) for m in ("ddim", "null-text", "negative-prompt", "direct")]
    rows += [("Plug-and-Play real edit", pnp)]
    results = []
    for name, fn in rows:
        seconds, mem, _ = timed(fn, device)
        results.append((name, seconds, mem))
    base = results[0][1]
    kind = f"{torch.cuda.get_device_name()} fp16 512 px SD1.5 UNet" if args.full else "CPU, tiny SD1 model"
    print(f"# bench_real_edit: {kind}, {steps} steps, {size} px, torch {torch.__version__}, {torch.get_num_threads()} threads")
    mem_label = "peak GPU MiB" if device.type == "cuda" else "process peak RSS MiB"
    print(f"| run | seconds | x plain | {mem_label} |")
    print("|---|---:|---:|---:|")
    for name, seconds, mem in results:
        print(f"| {name} | {seconds:.2f} | {seconds / base:.1f} | {mem:.0f} |")


if __name__ == "__main__":
    main()
