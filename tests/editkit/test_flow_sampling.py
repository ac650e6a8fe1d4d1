"""editkit.flow.sampling: the shared loop against the diffusers pipelines, and what a hook session sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editkit.flow import sampling as fs

from ._flow_common import SOURCE, TARGET, tiny


@pytest.mark.parametrize("fam", ["sd3", "flux"])
def test_generate_equals_the_diffusers_pipeline(fam):
    """Our loop (grid, timestep scaling, guidance, packing) reproduces the pipeline's own __call__ with the
    same generator. Mutations caught: SD3 timestep not scaled by 1000 / FLUX's scaled; FLUX's dynamic shift
    ignored (SD3's static grid used); guidance rows [cond, uncond] mixed up."""
    pipe = tiny(fam)
    ours = fs.generate(pipe, SOURCE, height=32, width=32, num_inference_steps=3, guidance_scale=4.0,
                       generator=torch.Generator().manual_seed(0), output_type="np")
    theirs = pipe(SOURCE, height=32, width=32, num_inference_steps=3, guidance_scale=4.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


class RecordingSession:
    """A hook session as editkit.hooks' HookSession is driven: begin / set_step / step_end."""

    def __init__(self):
        self.events = []
        self.step = None

    def begin(self, layout, latent_hw, num_steps):
        self.events.append(("begin", layout.num_prompts, layout.cfg, layout.batch_size, latent_hw, num_steps))

    def set_step(self, step, timestep=None):
        self.step = step
        self.events.append(("step", step))

    def step_end(self, latents):
        self.events.append(("end", tuple(latents.shape)))
        return latents


class StepRecordingProcessor:
    """Wraps a layer's processor (installed with transformer.set_attn_processor) and records, per call, the
    step the session was told and the batch size the layer saw."""

    def __init__(self, inner, session, seen):
        self.inner, self.session, self.seen = inner, session, seen

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.seen.append((self.session.step, hidden_states.shape[0]))
        return self.inner(attn, hidden_states, *args, **kwargs)


@pytest.mark.parametrize("fam, rows", [("sd3", 4), ("flux", 2)])
def test_hooks_installed_with_set_attn_processor_see_the_step_and_the_batch_layout(fam, rows):
    """Mutations caught: set_step called after the transformer (hooks see the previous step); the session not
    told the layout (SD3: 2 prompts with guidance = 4 rows, FLUX: 2 rows)."""
    pipe = tiny(fam)
    session, seen = RecordingSession(), []
    previous = dict(pipe.transformer.attn_processors)
    layers = len(previous)
    pipe.transformer.set_attn_processor({k: StepRecordingProcessor(p, session, seen) for k, p in previous.items()})
    try:
        cond = fs.encode_prompts(pipe, [SOURCE, TARGET])
        x1 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        fs.sample(pipe, x1, cond, [3.0, 5.0], 3, session=session)
    finally:
        pipe.transformer.set_attn_processor(previous)
    assert session.events[0] == ("begin", 2, fam == "sd3", rows, (16, 16), 3)
    assert [e for e in session.events if e[0] == "step"] == [("step", 0), ("step", 1), ("step", 2)]
    assert [s for s, _ in seen] == [0] * layers + [1] * layers + [2] * layers
    assert {b for _, b in seen} == {rows}
    assert session.events[-1] == ("end", (2, 4, 16, 16))


def test_per_prompt_guidance_is_applied_row_by_row():
    """Two prompts with different guidance in one batch equal each prompt alone. Mutation caught: the
    guidance vector broadcast over the wrong dimension or its rows swapped."""
    pipe = tiny("sd3")
    cond = fs.encode_prompts(pipe, [SOURCE, TARGET])
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(700.0)
    both = fs.velocity(pipe, x, t, cond, [2.0, 6.0])
    alone = fs.velocity(pipe, x[1:], t, cond.select([1]), 6.0)
    assert torch.allclose(both[1:], alone, atol=1e-5)
    assert not torch.allclose(both[:1], fs.velocity(pipe, x[:1], t, cond.select([0]), 6.0), atol=1e-3)
