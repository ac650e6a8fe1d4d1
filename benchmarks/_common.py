"""Helpers shared by the benchmark scripts: timing, peak memory, model presets with random weights."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
import time
from dataclasses import dataclass

import torch


@dataclass
class Measure:
    seconds: float = 0.0
    peak_bytes: int = 0


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def measure(device: torch.device):
    """Wall time and peak memory of the block: CUDA peak allocated on a GPU, peak RSS growth on the CPU."""
    m = Measure()
    stop = threading.Event()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
        peak = [base]

        def poll():
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                time.sleep(0.005)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
    t0 = time.perf_counter()
    try:
        yield m
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize()
        m.seconds = time.perf_counter() - t0
        if device.type == "cuda":
            m.peak_bytes = torch.cuda.max_memory_allocated() - base
        else:
            stop.set()
            thread.join()
            m.peak_bytes = max(peak[0], _rss_bytes()) - base


def best_of(runs: dict, repeats: int, device: torch.device) -> dict[str, Measure]:
    """Warm each run up, then time them interleaved ``repeats`` times and keep each one's best, so a busy
    machine slows all of them alike."""
    for fn in runs.values():
        fn()
    results: dict[str, Measure] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            with measure(device) as m:
                fn()
            if name not in results or m.seconds < results[name].seconds:
                results[name] = m
    return results


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sd15_pipeline(device: torch.device, dtype: torch.dtype, full: bool):
    """A Stable Diffusion pipeline with random weights: the full SD 1.5 architecture (``full``), or a small
    CPU-sized one with the same block structure (4 blocks, attention at 1, 1/2, 1/4 of the latent, and 1/8
    in the mid block) and a latent of the same 64x64 size at its default resolution."""
    import tempfile

    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from editkit.testing import make_tokenizer, tiny_scheduler, tiny_vae

    tok = make_tokenizer(tempfile.mkdtemp(prefix="bench-tok-"))
    gen_state = torch.random.fork_rng(devices=[])
    with gen_state:
        torch.manual_seed(0)
        if full:
            unet = UNet2DConditionModel(
                sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=768, attention_head_dim=8,
            )
            vae = AutoencoderKL(
                block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, sample_size=512,
            )
            text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                                num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
                                                bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1))
        else:
            unet = UNet2DConditionModel(
                sample_size=64, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64, 64, 64), norm_num_groups=16,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=64, attention_head_dim=8,
            )
            vae = tiny_vae()
            text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                                num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=77,
                                                bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=tiny_scheduler("sd1"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fmt_mb(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"
