"""Localisation: expert boxes (NIH, synthetic), box geometry under pad/crop, pointing game, IoU, energy in box."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chestxray.errors import ConfigError, DataError
from chestxray.explain.localize import (
    Box,
    box_mask,
    fit_square_box,
    is_empty_map,
    localization_scores,
    pointing_hit,
    read_boxes,
    scale_box,
    topk_iou,
)
from tests.explain.helpers import SIZE, blob

# ---------- boxes ----------


def test_read_nih_bbox_file(shared_data: Path) -> None:
    boxes = read_boxes(shared_data / "nih-metadata" / "BBox_List_2017.csv.gz")
    assert len(boxes) == 984
    assert set(boxes["label"]) == {
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax"
    }
    assert (boxes["label"] == "Infiltration").sum() == 123
    first = boxes.iloc[0]
    assert first["image_id"] == "00013118_008.png" and first["label"] == "Atelectasis"
    assert first[["x", "y", "w", "h"]].tolist() == pytest.approx([225.0847, 547.0192, 86.7797, 79.1864], abs=1e-3)
    assert (boxes["frame_w"] == 1024).all() and (boxes["frame_h"] == 1024).all()
    assert ((boxes["x"] >= 0) & (boxes["x"] + boxes["w"] <= 1024 + 1)).all()


def test_read_synthetic_boxes_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "boxes.csv"
    good.write_text("Image Index,Finding Label,x,y,w,h\nimg_0.png,Infiltrate,4,5,10,12\n")
    boxes = read_boxes(good)
    assert boxes.iloc[0][["label", "x", "h"]].tolist() == ["Infiltration", 4.0, 12.0]
    assert np.isnan(boxes.iloc[0]["frame_w"])
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Label,x,y,w\nimg_0.png,Mass,4,5,10\n")
    with pytest.raises(DataError, match=r"bad.csv: no box column\(s\) \['h'\]"):
        read_boxes(bad)
    bad.write_text("Image Index,Finding Label,x,y,w,h\nimg_0.png,Mass,4,5,0,3\n")
    with pytest.raises(DataError, match="row 2: box must have .*positive w, h"):
        read_boxes(bad)
    with pytest.raises(DataError, match="not found"):
        read_boxes(tmp_path / "missing.csv")


def test_box_geometry_pad_and_crop() -> None:
    # a 200x100 image letterboxed into 100x100: scale 0.5, 25 px bands top and bottom
    assert fit_square_box(Box(0, 0, 200, 100), 200, 100, 100, "pad") == Box(0, 25, 100, 50)
    # centre crop keeps the middle 100x100 of the same image
    assert fit_square_box(Box(50, 0, 100, 100), 200, 100, 100, "crop") == Box(0, 0, 100, 100)
    # NIH frame 1024 -> a 512 px file -> 256 px prepared image: a quarter of the coordinates
    assert scale_box(Box(100, 200, 40, 80), (1024, 1024), (512, 512), 256, "pad") == Box(25, 50, 10, 20)
    # stretch scales each side on its own: x by 100/200, y by 100/100
    assert fit_square_box(Box(50, 20, 100, 40), 200, 100, 100, "stretch") == Box(25, 20, 50, 40)
    with pytest.raises(ConfigError, match="'squash'"):
        fit_square_box(Box(0, 0, 1, 1), 10, 10, 10, "squash")


def test_box_geometry_matches_fit_square() -> None:
    """A white rectangle drawn at a box lands where the mapped box says, after the real fit_square."""
    from chestxray.data.imaging import fit_square

    for mode in ("pad", "crop", "stretch"):
        img = np.zeros((120, 200), dtype=np.uint8)
        img[40:80, 90:150] = 255
        out = fit_square(img, 64, mode)
        mask = box_mask([fit_square_box(Box(90, 40, 60, 40), 200, 120, 64, mode)], out.shape)
        bright = out > 127
        assert (bright & mask).sum() / (bright | mask).sum() > 0.85, mode


# ---------- scores ----------


def test_scores_on_hand_made_heatmaps() -> None:
    mask = box_mask([Box(8, 8, 8, 8)], (SIZE, SIZE))
    assert mask.sum() == 64 and mask[8:16, 8:16].all()
    inside = localization_scores(blob((12, 12)), mask)
    assert inside["pointing_hit"] == 1.0 and inside["energy_in_box"] > 0.5
    assert inside["box_fraction"] == pytest.approx(64 / SIZE**2)
    outside = localization_scores(blob((26, 26)), mask)
    assert outside["pointing_hit"] == 0.0 and outside["energy_in_box"] < 0.05 and outside["iou_top20"] < 0.05
    # the heatmap equal to the box, with the box 25% of the image, is a perfect top-25% match
    quarter = box_mask([Box(0, 0, 16, 16)], (SIZE, SIZE))
    assert topk_iou(quarter.astype(float), quarter, 25.0) == pytest.approx(1.0)
    assert topk_iou(quarter.astype(float), quarter, 50.0) == pytest.approx(0.5)
    assert pointing_hit(-blob((12, 12)), mask) == 0.0
    with pytest.raises(ValueError, match="same 2-D shape"):
        pointing_hit(np.zeros((4, 4)), np.zeros((5, 5), dtype=bool))


def test_empty_maps_and_cut_boxes_are_not_hits_and_ties_are_shared() -> None:
    """A map without signal (all zero, or flat) or a box the crop cut away scores n/a on every measure; tied maxima
    give the expected hit."""
    mask = box_mask([Box(8, 8, 8, 8)], (SIZE, SIZE))
    for flat in (np.zeros((SIZE, SIZE)), np.full((SIZE, SIZE), 0.7), np.full((SIZE, SIZE), np.nan)):
        assert is_empty_map(flat)
        scores = localization_scores(flat, mask)
        assert scores["empty_map"] == 1.0
        assert all(np.isnan(scores[k]) for k in ("pointing_hit", "iou_top20", "energy_in_box"))
    assert not is_empty_map(blob((12, 12))) and localization_scores(blob((12, 12)), mask)["empty_map"] == 0.0
    # a box the centre crop cut away covers no pixel of the input: n/a and flagged, never a miss (0)
    gone = box_mask([fit_square_box(Box(0, 10, 4, 8), 48, 32, SIZE, "crop")], (SIZE, SIZE))
    assert not gone.any()
    cut = localization_scores(blob((12, 12)), gone)
    assert cut["box_cut"] == 1.0 and cut["empty_map"] == 0.0 and cut["box_fraction"] == 0.0
    assert all(np.isnan(cut[k]) for k in ("pointing_hit", "iou_top20", "energy_in_box"))
    assert localization_scores(blob((12, 12)), mask)["box_cut"] == 0.0
    # a plateau of 4 tied maxima, one inside the box: a quarter of a hit (random tie-break in expectation), not 1.0
    plateau = np.zeros((SIZE, SIZE))
    plateau[[10, 2, 2, 30], [10, 2, 30, 2]] = 1.0
    assert pointing_hit(plateau, mask) == pytest.approx(0.25)
