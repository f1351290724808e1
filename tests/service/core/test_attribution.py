"""The attribution methods on plain numpy functions: exact where the answer is known, seeded, bounded."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from service.contract import Preprocessing
from service.core.attribution import Explainer, Occlusion, Rise, baseline_value, default_patch, make_explainer
from service.errors import InvalidInput, PayloadTooLarge

WEIGHTS = np.random.default_rng(0).standard_normal((12, 10, 2))


def linear(rows: np.ndarray) -> np.ndarray:
    """A score that is a fixed weighted sum of the pixels."""
    return np.einsum("nhwc,hwc->n", rows.astype(np.float64), WEIGHTS)


def explain(explainer: Explainer, score: Callable[[np.ndarray], np.ndarray], job: int = 7) -> np.ndarray:
    for start in range(0, explainer.rows, job):
        stop = min(explainer.rows, start + job)
        explainer.add(start, score(explainer.perturbed(start, stop)))
    return explainer.attribution(float(score(image()[None])[0]))


def image() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (12, 10, 2)).astype(np.float32)


def test_one_pixel_occlusion_of_a_linear_score_is_exact() -> None:
    attribution = explain(Occlusion(image(), 50.0, patch=1, stride=1), linear)
    expected = ((image() - 50.0) * WEIGHTS).sum(axis=2)  # the score lost when the pixel becomes 50
    np.testing.assert_allclose(attribution, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("patch", "stride", "rows"), [(4, 2, 5 * 4), (3, 3, 4 * 4), (12 // 2, 1, 7 * 5)])
def test_occlusion_covers_every_pixel_and_counts_its_rows(patch: int, stride: int, rows: int) -> None:
    occlusion = Occlusion(image(), 0.0, patch=patch, stride=stride)
    assert occlusion.rows == rows
    hidden = (occlusion.perturbed(0, rows) == 0).all(axis=3)
    assert hidden.any(axis=0).all()  # the last patch of each axis touches the far edge
    assert (hidden.sum(axis=(1, 2)) == patch * patch).all()


def test_rise_masks_are_seeded_and_in_range() -> None:
    a, b, c = (Rise(image(), 0.0, masks=30, grid=4, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.masks(0, 30), b.masks(0, 30))
    assert not np.array_equal(a.masks(0, 30), c.masks(0, 30))
    masks = a.masks(0, 30)
    assert masks.shape == (30, 12, 10) and masks.min() >= 0 and masks.max() <= 1
    np.testing.assert_array_equal(a.masks(10, 20), masks[10:20])  # slices are the same masks
    assert 0.3 < masks.mean() < 0.7


def test_rise_slices_across_its_blocks_are_the_same_masks_in_any_order() -> None:
    rise, again = (Rise(image(), 0.0, masks=600, grid=3, seed=9) for _ in range(2))
    whole = rise.masks(0, 600)  # three blocks of seeded draws: 256, 256, 88
    assert whole.shape == (600, 12, 10)
    for start, stop in ((500, 600), (250, 262), (0, 8), (255, 513)):  # out of order, across blocks
        np.testing.assert_array_equal(again.masks(start, stop), whole[start:stop])
    assert not np.array_equal(whole[:256], whole[256:512])


def test_rise_recovers_a_region_the_score_reads() -> None:
    block = np.zeros((12, 10, 2))
    block[2:8, 1:6] = 1.0  # the score sums this block (the masks' cells are 3x2 pixels here)
    flat = np.full((12, 10, 2), 200.0, np.float32)
    rise = Rise(flat, 50.0, masks=3000, grid=5, seed=0)
    for start in range(0, 3000, 100):
        rows = rise.perturbed(start, start + 100)
        rise.add(start, np.einsum("nhwc,hwc->n", rows.astype(np.float64), block))
    attribution = rise.attribution(float((flat * block).sum()))
    truth = block.sum(axis=2) * 150.0  # each pixel of the block: two channels, 200 -> 50
    assert np.corrcoef(attribution.ravel(), truth.ravel())[0, 1] > 0.8  # 0.89: blurred by a cell
    assert attribution[2:8, 1:6].mean() > 5 * np.abs(attribution[10:, 7:]).mean()


def test_attribution_before_every_row_is_scored_is_an_error() -> None:
    for explainer in (
        Occlusion(image(), 0.0, patch=2, stride=2),
        Rise(image(), 0.0, masks=4, grid=2, seed=0),
    ):
        explainer.add(0, np.zeros(1))
        with pytest.raises(RuntimeError, match="before every row"):
            explainer.attribution(1.0)


def test_parameters_and_row_limit() -> None:
    assert default_patch(28, 28) == 4 and default_patch(32, 32) == 5 and default_patch(3, 100) == 1
    occlusion = make_explainer("occlusion", image(), 0.0)
    assert occlusion.describe() == {"patch": 1, "stride": 1, "baseline": 0.0}  # a seventh of 10
    with pytest.raises(InvalidInput, match="patch must be from 1 to 10 for the 12x10 input, got 11"):
        make_explainer("occlusion", image(), 0.0, patch=11)
    with pytest.raises(InvalidInput, match="stride must be from 1 to the patch size"):
        make_explainer("occlusion", image(), 0.0, patch=2, stride=3)
    with pytest.raises(InvalidInput, match="masks must be at least 2"):
        make_explainer("rise", image(), 0.0, masks=1)
    with pytest.raises(InvalidInput, match="grid must be from 2 to 10"):
        make_explainer("rise", image(), 0.0, grid=11)
    with pytest.raises(InvalidInput, match="grid must be from 2 to 64 for the 100x100 input, got 65"):
        make_explainer("rise", np.zeros((100, 100, 1), np.float32), 0.0, grid=65)
    with pytest.raises(InvalidInput, match="unknown method 'lime'"):
        make_explainer("lime", image(), 0.0)
    with pytest.raises(PayloadTooLarge, match=r"needs 101 rows .* the limit is 100 rows"):
        make_explainer("rise", image(), 0.0, masks=100, max_rows=100)
    assert make_explainer("rise", image(), 0.0, masks=99, max_rows=100).rows == 99


def test_the_baseline_is_black_for_digits_and_grey_for_photos() -> None:
    digit = Preprocessing(height=28, width=28, color="grayscale", resize="digit", input_range=(0.0, 1.0))
    photo = Preprocessing(height=32, width=32, color="rgb", resize="stretch", input_range=(-1.0, 1.0))
    assert (baseline_value(digit), baseline_value(photo)) == (0.0, 0.0)
    assert baseline_value(photo.model_copy(update={"input_range": (0.0, 255.0)})) == 127.5
