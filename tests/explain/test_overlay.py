"""Overlays for people: original beside the heat (only where it is), a colour bar, and the decision in words."""

from __future__ import annotations

import numpy as np
import pytest

from chestxray.explain.localize import Box
from chestxray.explain.overlay import BAR, LINE, Caption, render_overlay
from tests.explain.helpers import SIZE, blob


def test_caption_says_decision_and_outcome() -> None:
    assert Caption("Mass", 0.9, threshold=0.5, truth=1).outcome == "TP"
    assert Caption("Mass", 0.9, threshold=0.5, truth=0).outcome == "FP"
    assert Caption("Mass", 0.2, threshold=0.5, truth=1).outcome == "FN"
    assert Caption("Mass", 0.2, threshold=0.5, truth=0).outcome == "TN"
    assert Caption("Mass", 0.2, threshold=0.5).outcome == "" and Caption("Mass", 0.2, truth=1).outcome == ""
    lines = Caption("Mass", 0.83, "gradcam", 0.5, 0, "00000001_000.png", "test").lines()
    assert lines == ["00000001_000.png | split: test",
                     "Mass: p=0.83, threshold 0.50 -> positive (FP, truth negative) [gradcam]"]


def test_overlay_side_by_side_heat_only_where_it_is() -> None:
    gray = np.full((SIZE, SIZE), 100, dtype=np.uint8)
    picture = render_overlay(gray, blob((8, 24)), Caption("Mass", 0.9, "gradcam", 0.5, 1), [Box(4, 20, 8, 8)], display=64)
    top = LINE * 1 + 6
    assert picture.mode == "RGB" and picture.size == (2 * 64 + 4 + 4 + BAR + 22, 64 + top)
    arr = np.asarray(picture).astype(int)
    left, right = arr[top:, :64], arr[top:, 68:132]
    assert (np.abs(left - 100) <= 1).all()  # the original, untouched
    hot, cold = right[48, 16], right[8, 56]  # at the blob (display scale 2) vs far away
    assert hot[0] > hot[2] + 50 and (np.abs(cold - 100) <= 1).all()  # cold regions keep the radiograph's grey
    bar = arr[top:, 136:136 + BAR]
    assert bar[0, BAR // 2, 0] > bar[0, BAR // 2, 2] and bar[-1, BAR // 2, 2] > bar[-1, BAR // 2, 0]  # 1 red, 0 blue
    with pytest.raises(ValueError, match="same shape"):
        render_overlay(gray, np.zeros((4, 4)), "x")


def test_overlay_of_an_empty_map_is_untinted_and_says_so() -> None:
    gray = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
    picture = render_overlay(gray, np.zeros((SIZE, SIZE)), "Mass p=0.10", display=SIZE)
    top = 2 * LINE + 6  # the title and the 'empty map' line
    arr = np.asarray(picture)
    np.testing.assert_array_equal(arr[top:, :SIZE], arr[top:, SIZE + 4:2 * SIZE + 4])
