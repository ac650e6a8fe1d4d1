"""Comparison images of an evaluation: side by side per held-out view, and one contact sheet."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from splat.outputs import CONTACT_SHEET_NAME, atomic_save_image, save_comparisons


def test_save_comparisons_pairs_ground_truth_and_render(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = {}
    for stem in ("view_000", "view_008", "view_016"):
        gt, render = torch.rand(12, 16, 3, generator=g), torch.rand(12, 16, 3, generator=g)
        atomic_save_image(tmp_path / f"{stem}_gt.png", gt)
        atomic_save_image(tmp_path / f"{stem}_render.png", render)
        images[stem] = (
            np.asarray(Image.open(tmp_path / f"{stem}_gt.png")),
            np.asarray(Image.open(tmp_path / f"{stem}_render.png")),
        )
    (tmp_path / "lonely_gt.png").write_bytes(
        (tmp_path / "view_000_gt.png").read_bytes()
    )  # no render: skipped

    sheet_path = save_comparisons(tmp_path, columns=2, gap=4)
    assert sheet_path == tmp_path / CONTACT_SHEET_NAME
    assert not (tmp_path / "lonely_compare.png").exists()
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    for stem, (gt, render) in images.items():
        side = np.asarray(Image.open(tmp_path / f"{stem}_compare.png").convert("RGB"))
        assert side.shape == (12, 16 + 4 + 16, 3)
        np.testing.assert_array_equal(side[:, :16], gt)  # ground truth left
        np.testing.assert_array_equal(side[:, 20:], render)  # render right
        # the side-by-side image appears somewhere in the contact sheet, unchanged
        found = any(
            np.array_equal(sheet[y : y + 12, x : x + 36], side)
            for y in range(sheet.shape[0] - 11)
            for x in range(sheet.shape[1] - 35)
            if sheet[y, x, 0] == side[0, 0, 0]
        )
        assert found, stem
    # 3 views in 2 columns: 2 rows
    assert sheet.shape[1] == 2 * 36 + 3 * 4
    assert sheet.shape[0] > 2 * 12


def test_save_comparisons_without_pairs_writes_nothing(tmp_path):
    assert save_comparisons(tmp_path) is None
    assert list(tmp_path.iterdir()) == []
