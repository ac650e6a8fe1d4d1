"""The LPIPS term of `splat edit`'s loss, with a stand-in LPIPS network built here (no weights are downloaded):
found the way `splat train` finds LPIPS, it changes the update by its weight; without weights the edit runs,
says so once and records the term as off."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from splat.edit import EditConfig, edit_scene
from splat.edit.lpips_term import load_lpips_term, patch_tiles

from .conftest import DEMO

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"
NOTE = "the LPIPS term of the edit loss is off"


class StandInLPIPS(torch.nn.Module):
    """LPIPS's interface: two [N, 3, h, w] batches in [-1, 1] -> one distance per pair [N, 1, 1, 1],
    differentiable in its inputs (unit-normalised features of a seeded random convolution, squared
    differences averaged). Records the shape and range of what it is given."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()
        self.requires_grad_(False)
        self.seen: list[tuple] = []

    def forward(self, x, y):
        self.seen.append((tuple(x.shape), float(x.detach().min()), float(x.detach().max()), x.requires_grad))
        fx, fy = F.normalize(self.conv(x), dim=1), F.normalize(self.conv(y), dim=1)
        return (fx - fy).square().sum(1).mean((1, 2))[:, None, None, None]


def test_patch_tiles_are_the_centred_grid_of_whole_patches():
    """Mutation caught: tiles cut with rows and columns swapped (a reshape without the permute)."""
    image = torch.rand(70, 100, 3)
    tiles = patch_tiles(image, 32)
    assert tiles.shape == (2 * 3, 3, 32, 32)
    y0, x0 = (70 - 64) // 2, (100 - 96) // 2
    for r in range(2):
        for c in range(3):
            want = image[y0 + 32 * r : y0 + 32 * (r + 1), x0 + 32 * c : x0 + 32 * (c + 1)].permute(2, 0, 1)
            assert torch.equal(tiles[3 * r + c], want), (r, c)


def test_weight_zero_is_off_silently(monkeypatch, capsys):
    """Mutation caught: the weights looked up (and the note printed) although the term is turned off."""
    from splat.training import metrics

    monkeypatch.setattr(metrics, "load_lpips", lambda device: pytest.fail("looked up with weight 0"))
    assert load_lpips_term(0.0, 32, (64, 48), "cpu") == (None, "--lpips-weight 0")
    assert capsys.readouterr().err == ""


def _cfg(cache, **kw) -> EditConfig:
    base = dict(source=SOURCE, target=TARGET, steps=4, guidance=1.0, strength=0.5, edit_size=32, edit_every=2,
                iterations=2, cache_dir=cache, progress=False)  # fmt: skip
    return EditConfig(**{**base, **kw})


def test_lpips_term_changes_the_update_by_its_weight_and_is_noted_when_off(run, smooth, tmp_path, monkeypatch,
                                                                           capsys):  # fmt: skip
    """Three edits from the same run, alike but for the LPIPS term: with the stand-in at weight 1 and 4, and
    with no weights on disk. Mutations caught: the term dropped from the loss, or detached (weight 1 ends on
    the Gaussians of no term); the weight ignored (weights 1 and 4 end alike); the note missing or printed
    at every step; whole images given instead of 32 px patches, or in [0, 1] instead of [-1, 1]."""
    from splat.gaussians.checkpoint import read_checkpoint
    from splat.training import metrics

    net = StandInLPIPS()
    found = {"net": net}
    monkeypatch.setattr(metrics, "load_lpips", lambda device: found["net"])
    params, records = {}, {}
    for name, weight, present in (("w1", 1.0, True), ("w4", 4.0, True), ("none", 1.0, False)):
        found["net"] = net if present else None
        net.seen.clear()
        res = edit_scene(run, DEMO, _cfg(tmp_path / "cache", lpips_weight=weight), tmp_path / name, pipe=smooth)
        params[name] = read_checkpoint(res.checkpoint)["params"]
        records[name] = json.loads((res.out / "edit.json").read_text())
        err = capsys.readouterr().err
        if present:
            assert NOTE not in err
            assert len(net.seen) >= res.steps  # at least once per training step
            shape, lo, hi, grad = net.seen[0]
            assert shape[1:] == (3, 32, 32) and shape[0] >= 1 and grad  # patches of the render, with its gradient
            assert -1.0 <= lo < 0.0 < hi <= 1.0  # mapped to [-1, 1]
        else:
            assert err.count(NOTE) == 1, err
            assert res.views_edited == 1
    assert records["w1"]["lpips_term"] is records["w4"]["lpips_term"] is True
    assert records["none"]["lpips_term"] is False and records["none"]["lpips_term_off"] == "no LPIPS weights on disk"
    assert records["w4"]["settings"]["lpips_weight"] == 4.0

    def differ(a, b):
        return any(not torch.equal(params[a][k], params[b][k]) for k in params[a])

    assert differ("w1", "none") and differ("w1", "w4")
