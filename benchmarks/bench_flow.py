"""Benchmark: transformer calls, time and peak memory of the flow-model methods against plain sampling.

    python benchmarks/bench_flow.py                      # tiny SD3 and FLUX pipelines (editkit.testing), CPU
    python benchmarks/bench_flow.py --full               # GPU: SD3.5-medium- and FLUX.1-dev-shaped transformers,
                                                         # random weights, 1024 x 1024, fp16 / bf16
    python benchmarks/bench_flow.py --full --device cpu --layers 1 --resolution 64 --steps 2 --repeats 0
                                                         # a CPU smoke test of --full (calls only)

Methods, each with its reference defaults (docs/flow-models.md):

* ``sample``: plain text-to-image sampling, the pipeline's Euler loop, 28 steps (the baseline);
* ``flowedit``: FlowEdit (SD3: T=50, n_max=33, 4 rows a call with guidance; FLUX: T=28, n_max=24, 2 rows);
* ``invert+edit``: Euler inversion of the photo (28 steps) and sampling with the target prompt (28 steps);
* ``fireflow invert+edit``: the same with FireFlow (29 calls each way);
* ``rf-inversion``: RF-Inversion's controlled inversion and sampling (28 + 28 steps).

Calls are counted with a forward hook on the transformer; times are the best of ``--repeats`` interleaved
rounds after a warm-up, and ratios are against ``sample`` measured in the same run. The tiny mode runs the
public API (``editkit.flowedit`` etc., text encoders and VAE included); ``--full`` builds only the
transformers at full size (no text encoders, VAE or weights to download) and runs the same loops on random
text embeddings and a random image latent, so what it times is the transformer work that dominates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import commit, device_name, fmt_mb, measure  # noqa: E402
from editkit.flow import flowedit as fe  # noqa: E402
from editkit.flow import inversion as fi  # noqa: E402
from editkit.flow import sampling as fs  # noqa: E402

# Full-size configurations (the models' transformer/config.json)
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
FLUX1_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                 axes_dims_rope=(16, 56, 56))
TEXT_TOKENS = {"sd3": 77 + 256, "flux": 512}  # CLIP + T5 tokens of SD3; T5 tokens of FLUX


class CallCounter:
    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *args):
        self.n += 1


def full_pipeline(family: str, device, dtype, layers: int | None):
    """A pipeline object holding only a full-width random transformer (and the model's scheduler)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    none = dict(vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise the weights in half precision, on the device
    try:
        with torch.device(device), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if family == "sd3":
                cfg = dict(SD35_MEDIUM)
                if layers is not None:
                    cfg.update(num_layers=layers, dual_attention_layers=tuple(range(min(layers, 13))))
                transformer = SD3Transformer2DModel(**cfg).eval()
                scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
                pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, text_encoder_3=None,
                                                tokenizer_3=None, **none)
            else:
                cfg = dict(FLUX1_DEV)
                if layers is not None:
                    cfg.update(num_layers=layers, num_single_layers=2 * layers)
                transformer = FluxTransformer2DModel(**cfg).eval()
                scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                            max_shift=1.15, base_image_seq_len=256,
                                                            max_image_seq_len=4096)
                pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, **none)
    finally:
        torch.set_default_dtype(previous)
    return pipe


def random_conditioning(pipe, family: str, prompts: int, device, dtype) -> fs.FlowConditioning:
    g = torch.Generator().manual_seed(1)
    cfg = pipe.transformer.config
    m, d, e = TEXT_TOKENS[family], cfg.joint_attention_dim, cfg.pooled_projection_dim
    r = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    if family == "sd3":
        return fs.FlowConditioning(family, r(prompts, m, d), r(prompts, e), r(prompts, m, d), r(prompts, e))
    return fs.FlowConditioning(family, r(prompts, m, d), r(prompts, e), text_ids=torch.zeros(m, 3, device=device, dtype=dtype))


def full_runs(pipe, family: str, resolution: int, device, dtype, steps: int | None = None):
    channels = pipe.transformer.config.in_channels // (4 if family == "flux" else 1)
    latent = resolution // 8
    x_src = torch.randn(1, channels, latent, latent, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    cond2 = random_conditioning(pipe, family, 2, device, dtype)
    src, tar = cond2.select([0]), cond2.select([1])
    config = fe.default_config(pipe, num_inference_steps=steps)
    plain_g = fs.DEFAULT_GUIDANCE[family]
    inv_g = 1.0 if family == "sd3" else plain_g
    steps = steps or 28
    rf = fi.RFInversionConfig(num_inference_steps=steps, source_guidance=0.0 if family == "flux" else 1.0)

    def invert_edit(solver):
        ts = fs.schedule(pipe, steps, x_src.shape[-2:]).sigmas.tolist()
        x1 = fs.integrate(fs.model_field(pipe, src, inv_g), x_src.float(), ts[::-1], solver)
        return fs.sample(pipe, x1.to(dtype), tar, plain_g, steps, solver=solver)

    def rf_edit():
        y1 = fs.randn_model(pipe, x_src, torch.Generator().manual_seed(3))
        ts = fs.schedule(pipe, rf.num_inference_steps, x_src.shape[-2:]).sigmas.tolist()
        field = fs.model_field(pipe, src, rf.source_guidance)
        fwd = lambda x, t, i: (lambda v: v + rf.gamma * ((y1 - x) / (1 - t) - v))(field(x, t, i))
        x1 = fs.integrate(fwd, x_src.clone(), ts[::-1])
        target_field = fs.model_field(pipe, tar, rf.target_guidance)
        window = rf.eta_steps()
        rev = lambda x, t, i: (lambda v: v + rf.eta * ((x - x_src) / t - v) if i in window else v)(target_field(x, t, i))
        return fs.integrate(rev, x1, ts)

    with torch.no_grad():
        return {
            "sample": lambda: fs.sample(pipe, torch.randn_like(x_src), src, plain_g, steps),
            "flowedit": lambda: fe.flowedit_latents(pipe, x_src, cond2, config, generator=torch.Generator().manual_seed(0)),
            "invert+edit": lambda: invert_edit("euler"),
            "fireflow invert+edit": lambda: invert_edit("fireflow"),
            "rf-inversion": rf_edit,
        }


def tiny_runs(pipe, family: str):
    from editkit.flow.edit import FlowSettings, edit_photo

    photo = _photo()
    settings = {"flowedit": FlowSettings(method="flowedit"), "rf-inversion": FlowSettings(method="rf-inversion")}
    steps = 28

    def invert_edit(solver):
        inv = fi.invert(pipe, photo, "a photo of a cat", num_inference_steps=steps, solver=solver)
        return fi.sample_back(pipe, inv, "a photo of a dog", guidance=fs.DEFAULT_GUIDANCE[family])

    return {
        "sample": lambda: fs.generate(pipe, "a photo of a cat", height=32, width=32, num_inference_steps=steps,
                                      generator=torch.Generator().manual_seed(0), output_type="latent"),
        "flowedit": lambda: edit_photo(pipe, photo, "a photo of a cat", ["a photo of a dog"], settings["flowedit"], seed=0),
        "invert+edit": lambda: invert_edit("euler"),
        "fireflow invert+edit": lambda: invert_edit("fireflow"),
        "rf-inversion": lambda: edit_photo(pipe, photo, "a photo of a cat", ["a photo of a dog"],
                                           settings["rf-inversion"], seed=0),
    }


def _photo():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size random transformers (a GPU)")
    parser.add_argument("--device", default=None, help="default: cuda with --full, else cpu")
    parser.add_argument("--resolution", type=int, default=1024, help="--full: image side in pixels")
    parser.add_argument("--layers", type=int, default=None, help="--full: fewer blocks (a smoke test on a CPU)")
    parser.add_argument("--families", default="sd3,flux")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds after the counted warm-up run (default 1 with --full, 2 tiny; 0: calls only)")
    parser.add_argument("--steps", type=int, default=None, help="--full: steps of every method (default: references')")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if args.full else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.full else 2)
    print(f"# bench_flow on {device_name(device)}, commit {commit()}, torch {torch.__version__}")
    for family in args.families.split(","):
        if args.full:
            dtype = torch.bfloat16 if family == "flux" else torch.float16
            if device.type == "cpu":
                dtype = torch.float32
            pipe = full_pipeline(family, device, dtype, args.layers)
            runs = full_runs(pipe, family, args.resolution, device, dtype, args.steps)
            params = sum(p.numel() for p in pipe.transformer.parameters()) / 1e9
            what = (f"{'SD3.5-medium' if family == 'sd3' else 'FLUX.1-dev'}-shaped transformer, {params:.2f} B params, "
                    f"{args.resolution} x {args.resolution}, {str(dtype).replace('torch.', '')}")
        else:
            from editkit.testing import tiny_flux_pipeline, tiny_sd3_pipeline

            pipe = tiny_sd3_pipeline() if family == "sd3" else tiny_flux_pipeline()
            pipe.set_progress_bar_config(disable=True)
            runs = tiny_runs(pipe, family)
            what = "tiny random pipeline (editkit.testing), 32 x 32 px, float32"
        counter = CallCounter(pipe.transformer)
        calls = {}
        for name, fn in runs.items():  # one counted run each, which is also the warm-up
            counter.n = 0
            fn()
            calls[name] = counter.n
        results: dict = {}
        for _ in range(repeats):  # interleaved rounds, each method's best kept: a busy machine slows all alike
            for name, fn in runs.items():
                with measure(device) as m:
                    fn()
                if name not in results or m.seconds < results[name].seconds:
                    results[name] = m
        print(f"\n## {family}: {what}", flush=True)
        print("| method | transformer calls | time (s) | x sample | peak memory |")
        print("| --- | --- | --- | --- | --- |")
        for name in runs:
            m = results.get(name)
            if m is None:
                print(f"| {name} | {calls[name]} | - | - | - |")
                continue
            base = results["sample"].seconds
            print(f"| {name} | {calls[name]} | {m.seconds:.2f} | {m.seconds / base:.2f} | {fmt_mb(m.peak_bytes)} |",
                  flush=True)
        del pipe, runs
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
