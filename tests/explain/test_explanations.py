"""explain_images and the CLI: Grad-CAM on a trained tiny CNN points at the blob, overlays, scores, DICOM sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from chestxray.errors import ConfigError
from chestxray.explain.attribution import (
    attribute,
    find_gradcam_layer,
)
from chestxray.explain.explanations import explain_images, summarize_scores
from chestxray.explain.localize import (
    Box,
    box_mask,
    energy_in_box,
    pointing_hit,
)
from chestxray.models.bundle import Bundle
from tests.explain.helpers import SIZE, BrightNet

# ---------- boxes ----------


def test_summarize_scores() -> None:
    table = pd.DataFrame(
        {"label": ["Mass", "Mass", "Mass", "Nodule", "Nodule"], "empty_map": [0.0, 0.0, 0.0, 0.0, 1.0],
         "box_cut": [0.0, 0.0, 1.0, 0.0, 0.0], "pointing_hit": [1.0, 0.0, np.nan, 1.0, np.nan],
         "iou_top20": [0.5, 0.1, np.nan, 0.3, np.nan], "energy_in_box": [0.8, 0.2, np.nan, 0.6, np.nan],
         "box_fraction": [0.1, 0.1, 0.0, 0.1, 0.1]}
    )
    summary = summarize_scores(table).set_index("label")
    # Mass's third box was cut away by the crop: counted as boxed and cut, left out of the hit rate (never a miss)
    assert summary.loc["Mass", "pointing_hit"] == 0.5 and summary.loc["Mass", "n"] == 3
    assert summary.loc["Mass", "n_cut"] == 1 and summary.loc["Mass", "n_scored"] == 2
    # Nodule's second map is empty: counted as boxed and empty, left out of the hit rate (never a hit)
    assert summary.loc["Nodule", "n"] == 2 and summary.loc["Nodule", "n_empty"] == 1
    assert summary.loc["ALL", ["n", "n_empty", "n_cut", "n_scored"]].tolist() == [5, 1, 1, 3]
    assert summary.loc["ALL", "pointing_hit"] == pytest.approx(2 / 3)


# ---------- attributions ----------


def _blob_batch(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Noisy dark images in [-1, 1]; half carry a bright 6x6 square at a random place (label 1)."""
    images = torch.rand(n, 1, SIZE, SIZE, generator=gen) * 0.4 - 1.0
    labels = torch.zeros(n, 2)
    places = []
    for i in range(n):
        x, y = (int(v) for v in torch.randint(2, SIZE - 8, (2,), generator=gen))
        places.append((x, y))
        if i % 2 == 0:
            images[i, 0, y : y + 6, x : x + 6] = 1.0
            labels[i, 1] = 1.0
        else:
            labels[i, 0] = 1.0
    return images, labels, places


@pytest.fixture(scope="module")
def trained_net() -> tuple[torch.nn.Module, torch.Generator]:
    """BrightNet trained for 40 steps to put logit 1 on images with a bright square (seeded, CPU)."""
    gen = torch.Generator().manual_seed(0)
    net = BrightNet()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    for _ in range(40):
        images, labels, _ = _blob_batch(gen, 16)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), gen


def test_gradcam_on_trained_tiny_cnn_points_at_the_blob(trained_net: tuple[torch.nn.Module, torch.Generator]) -> None:
    net, gen = trained_net
    images, labels, places = _blob_batch(gen, 8)
    with torch.no_grad():
        assert ((net(images)[:, 1] > net(images)[:, 0]).float() == labels[:, 1]).float().mean() >= 0.875
    assert find_gradcam_layer(net) is net[2]
    cams = attribute(net, images[::2], target=1, method="gradcam")
    assert cams.shape == (4, SIZE, SIZE) and cams.max() == pytest.approx(1.0)
    for cam, (x, y) in zip(cams, places[::2]):
        mask = box_mask([Box(x, y, 6, 6)], (SIZE, SIZE))
        assert energy_in_box(cam, mask) > 2 * mask.mean()
        assert pointing_hit(cam, box_mask([Box(x - 2, y - 2, 10, 10)], (SIZE, SIZE))) == 1.0


def _write_images(folder: Path) -> tuple[list[Path], Path]:
    """Three 48x40 PNGs (dark noise; two with a bright 8x8 square) and a boxes.csv in file pixels."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for i, place in enumerate([(6, 10), (30, 24), None]):
        img = rng.integers(0, 50, size=(40, 48), dtype=np.uint8)
        if place is not None:
            x, y = place
            img[y : y + 8, x : x + 8] = 255
            rows.append(f"img_{i}.png,Mass,{x},{y},8,8")
        paths.append(folder / f"img_{i}.png")
        Image.fromarray(img).save(paths[-1])
    boxes = folder / "boxes.csv"
    boxes.write_text("Image Index,Finding Label,x,y,w,h\n" + "\n".join(rows) + "\n")
    return paths, boxes


def _bundle(net: torch.nn.Module, path: Path) -> Bundle:
    card = {"architecture": "test", "num_labels": 2, "in_chans": 1, "image_size": SIZE, "resize": "pad",
            "normalization": "gray", "labels": ["Effusion", "Mass"], "task": "multilabel"}
    return Bundle(net=net, card=card, path=path)


def test_explain_images_gradcam_scores_and_overlays(
    tmp_path: Path, trained_net: tuple[torch.nn.Module, torch.Generator]
) -> None:
    paths, boxes = _write_images(tmp_path / "images")
    out = tmp_path / "explain"
    results = explain_images(_bundle(trained_net[0], tmp_path), paths, "gradcam", out_dir=out, boxes=boxes)
    assert [(r.image_id, r.label) for r in results[:2]] == [("img_0.png", "Mass"), ("img_1.png", "Mass")]
    for r in results[:2]:
        assert r.heatmap.shape == (SIZE, SIZE) and r.probability > 0.5
        assert r.scores["pointing_hit"] == 1.0 and r.scores["energy_in_box"] > 3 * r.scores["box_fraction"]
    assert results[2].scores == {}  # no box: explained for its top-scoring label, not scored
    table = pd.read_csv(out / "scores.csv")
    assert list(table.columns) == ["image_id", "path", "split", "label", "probability", "threshold", "truth", "outcome",
                                   "method", "overlay", "for_map_empty", "map_shown", "empty_map", "box_cut",
                                   "pointing_hit", "iou_top20", "energy_in_box", "box_fraction"]
    assert len(table) == 3 and table["pointing_hit"].tolist()[:2] == [1.0, 1.0] and np.isnan(table["pointing_hit"][2])
    for name in table["overlay"]:
        with Image.open(name) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size[0] >= SIZE
    assert sorted(p.name for p in out.iterdir()) == sorted([*(Path(n).name for n in table["overlay"]), "scores.csv",
                                                            "coverage.csv", "settings.json"])
    # a second run into the same folder replaces the first: no stale overlays mixed in
    explain_images(_bundle(trained_net[0], tmp_path), paths[:1], "gradcam", label="Mass", out_dir=out)
    assert len(list(out.glob("*.png"))) == 1 and len(pd.read_csv(out / "scores.csv")) == 1


def test_explain_images_ig_and_label_choice(tmp_path: Path, trained_net: tuple[torch.nn.Module, torch.Generator]) -> None:
    paths, _ = _write_images(tmp_path / "images")
    bundle = _bundle(trained_net[0], tmp_path)
    results = explain_images(bundle, paths[:1], "ig", label="Effusion", out_dir=tmp_path / "ig", n_steps=8)
    assert len(results) == 1 and results[0].label == "Effusion" and results[0].method == "ig"
    assert results[0].heatmap.shape == (SIZE, SIZE) and results[0].overlay.name == "img_0_Effusion_ig.png"
    with pytest.raises(ConfigError, match="'Mas' is not one of the model's labels.*did you mean 'Mass'"):
        explain_images(bundle, paths, label="Mas", out_dir=tmp_path / "x")


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run folder whose bundle is an (untrained) cnn-tiny over a prepared synthetic dataset; and the synth folder."""
    from chestxray.data.catalog import save_catalog
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.sources import read_nih
    from chestxray.data.split import assign_splits
    from chestxray.data.synth import FINDINGS, make_synthetic
    from chestxray.models import build_model
    from chestxray.models.bundle import save_bundle

    root = tmp_path_factory.mktemp("explain_cli")
    synth = make_synthetic(root / "synth", n=12, size=48, seed=0, findings_p=0.5)
    catalog = assign_splits(read_nih(synth / "labels.csv", synth / "images"), seed=0)
    save_catalog(catalog, root / "catalog")
    prepare_dataset(root / "catalog", root / "prepared", size=SIZE, resize="crop", workers=1)
    torch.manual_seed(0)
    card = {"architecture": "cnn-tiny", "num_labels": len(catalog.labels), "in_chans": 1, "image_size": SIZE,
            "resize": "crop", "normalization": "gray", "labels": list(catalog.labels), "task": "multilabel",
            "prepared": str(root / "prepared")}
    assert set(FINDINGS) <= set(catalog.labels)
    save_bundle(root / "run" / "bundle", build_model("cnn-tiny", len(catalog.labels)), card)
    return root / "run", synth


def test_cli_explain_writes_overlays_and_scores(synth_run: tuple[Path, Path]) -> None:
    from typer.testing import CliRunner

    from chestxray.cli import app

    run, synth = synth_run
    boxes = pd.read_csv(synth / "boxes.csv")
    images = sorted(set(boxes["Image Index"]))[:2]
    args = ["explain", str(run), *(str(synth / "images" / i) for i in images), "--boxes", str(synth / "boxes.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pointing-game hit rate" in result.output and "ALL" in result.output and "boxed map(s) empty" in result.output
    folder = run / "explain" / "files-gradcam-boxes"  # each run in its own folder, named by its settings
    table = pd.read_csv(folder / "scores.csv")
    expected = boxes[boxes["Image Index"].isin(images)][["Image Index", "Finding Label"]].drop_duplicates()
    assert sorted(zip(table["image_id"], table["label"])) == sorted(map(tuple, expected.to_numpy()))
    scored = table[table["empty_map"] == 0]
    assert scored["pointing_hit"].between(0, 1).all() and scored["energy_in_box"].between(0, 1).all()
    assert table.loc[table["empty_map"] == 1, "pointing_hit"].isna().all()
    assert all(Path(p).exists() and Path(p).parent == folder for p in table["overlay"])
    assert json.loads((folder / "settings.json").read_text())["method"] == "gradcam"

    split = CliRunner().invoke(app, ["explain", str(run), "--split", "train", "--n", "2", "--method", "ig",
                                     "--steps", "4", "--boxes", str(synth / "boxes.csv"), "--out", str(run / "ig")])
    assert split.exit_code == 0, split.output
    ig = pd.read_csv(run / "ig" / "scores.csv")
    assert ig["image_id"].nunique() == 2 and set(ig["method"]) == {"ig"} and set(ig["split"]) == {"train"}
    assert json.loads((run / "ig" / "settings.json").read_text())["selection"] == "images with expert boxes"

    top = CliRunner().invoke(app, ["explain", str(run / "bundle"), "--split", "train", "--n", "3"])
    assert top.exit_code == 0, top.output
    picked = pd.read_csv(run / "explain" / "train-gradcam" / "scores.csv")  # a bundle's default: RUN/explain/…
    assert len(picked) == 3 and "pointing_hit" not in picked.columns and "no boxes to score" in top.output
    # no thresholds stored: decisions at 0.5, outcomes taken in turn (TP, FP, FN)
    labels = pd.read_csv(synth / "labels.csv").set_index("Image Index")["Finding Labels"]
    truth = [lab in labels[i].split("|") for i, lab in zip(picked["image_id"], picked["label"])]
    decided = (picked["probability"] >= 0.5).tolist()
    outcomes = [("T" if t == d else "F") + ("P" if d else "N") for t, d in zip(truth, decided)]
    assert picked["truth"].astype(bool).tolist() == truth and outcomes == picked["outcome"].tolist()

    bad = CliRunner().invoke(app, ["explain", str(synth), str(synth / "images" / images[0])])
    assert bad.exit_code == 1 and "neither a run folder" in bad.output


def test_balanced_selection_and_boxed_split_errors(synth_run: tuple[Path, Path]) -> None:
    from chestxray.explain.explanations import select_split_targets
    from chestxray.models.bundle import load_bundle

    run, synth = synth_run
    bundle = load_bundle(run / "bundle")
    labels = list(bundle.labels)
    rows = [{"image_id": f"img{i}", **{lab: 0 for lab in labels}, **{f"p_{lab}": 0.1 for lab in labels}} for i in range(6)]
    scores = pd.DataFrame(rows)
    first = labels[0]
    scores.loc[[0, 1], first] = 1  # two positives: one found (p 0.9), one missed (p 0.2)
    scores.loc[0, f"p_{first}"], scores.loc[1, f"p_{first}"] = 0.9, 0.2
    scores.loc[2, f"p_{first}"], scores.loc[3, f"p_{first}"] = 0.8, 0.95  # two false positives, 0.95 first
    table = pd.read_csv(synth / "labels.csv")
    from chestxray.data.catalog import load_catalog
    from chestxray.data.shards import read_manifest

    catalog = load_catalog(read_manifest(bundle.card["prepared"])["catalog"]).table
    train = catalog[catalog["split"] == "train"]
    scores["image_id"] = train["image_id"].head(6).tolist()
    picked = select_split_targets(bundle, "train", n=4, scores=scores)
    ids = scores["image_id"].tolist()
    by_path = {Path(p).name: i for i, p in zip(train["image_id"], train["path"])}
    assert [(by_path[p.name], lab) for p, lab in picked] == [(ids[0], first), (ids[3], first), (ids[1], first),
                                                             (ids[2], first)]  # TP, FP, FN, then FP again
    masked = scores.astype({first: float})
    masked.loc[3, first] = float("nan")  # a merged dataset whose source does not annotate it: no outcome at all
    picked = select_split_targets(bundle, "train", n=2, scores=masked)
    assert [by_path[p.name] for p, _ in picked] == [ids[0], ids[2]]  # the TP, then the only annotated FP
    with pytest.raises(ConfigError, match="outcomes"):
        select_split_targets(bundle, "train", scores=scores, outcomes=("XX",))
    boxed = pd.DataFrame({"image_id": [Path(p).name for p in train["path"].head(1)], "label": [first]})
    where = catalog.loc[catalog["path"] == train["path"].iloc[0], "split"].iloc[0]
    with pytest.raises(ConfigError, match=rf"no image of split 'test' has an expert box; boxed images per split: "
                                          rf"{where} 1; try --split {where}"):
        select_split_targets(bundle, "test", boxes=boxed)
    assert len(table)


def test_prepare_input_matches_prepare_and_reads_dicom_size(shared_data: Path, tmp_path: Path) -> None:
    """Explain feeds the model what prepare stores; a DICOM's file size comes from its header (for box mapping)."""
    from chestxray.data.imaging import load_square
    from chestxray.explain.explanations import prepare_input

    card = _bundle(BrightNet(), tmp_path).card
    png = _write_images(tmp_path / "images")[0][0]
    gray, inputs, file_size = prepare_input(png, card)
    np.testing.assert_array_equal(gray, load_square(png, SIZE, "pad"))
    assert inputs.shape == (1, 1, SIZE, SIZE) and file_size == (48, 40)
    assert inputs.min() >= -1.0 and inputs.max() <= 1.0
    dicom = next((shared_data / "cxr-dicom-samples").glob("1.2.*.dcm"))
    gray, _, file_size = prepare_input(dicom, card)
    assert gray.shape == (SIZE, SIZE) and file_size == (1024, 1024)


def test_a_box_cut_away_by_the_crop_is_not_a_miss(tmp_path: Path,
                                                  trained_net: tuple[torch.nn.Module, torch.Generator]) -> None:
    """48x40 images centre-cropped to 40x40 lose 4 columns each side: a box there is n/a (box_cut), not a 0."""
    paths, _ = _write_images(tmp_path / "images")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("Image Index,Finding Label,x,y,w,h\nimg_0.png,Mass,6,10,8,8\nimg_1.png,Mass,0,10,3,8\n")
    bundle = _bundle(trained_net[0], tmp_path)
    bundle.card["resize"] = "crop"
    results = explain_images(bundle, paths[:2], out_dir=tmp_path / "out", boxes=boxes)
    kept, cut = (r.scores for r in results)
    assert kept["box_cut"] == 0.0 and 0 <= kept["pointing_hit"] <= 1
    assert cut["box_cut"] == 1.0 and cut["box_fraction"] == 0.0
    assert all(np.isnan(cut[k]) for k in ("pointing_hit", "iou_top20", "energy_in_box"))
    summary = summarize_scores(pd.read_csv(tmp_path / "out" / "scores.csv")).set_index("label")
    assert summary.loc["ALL", ["n", "n_cut", "n_scored"]].tolist() == [2, 1, 1]
    assert summary.loc["ALL", "pointing_hit"] == kept["pointing_hit"]


class _Uncertain(torch.nn.Sequential):
    """Three classes, logits (0.3, 0, -0.3) whatever the image: softmax (0.44, 0.32, 0.24), no class at 0.5."""

    def __init__(self) -> None:
        super().__init__(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                         torch.nn.Linear(2, 3))
        with torch.no_grad():
            self[3].weight.zero_()
            self[3].bias.copy_(torch.tensor([0.3, 0.0, -0.3]))


def test_multiclass_captions_and_selection_use_the_argmax(tmp_path: Path, synth_run: tuple[Path, Path]) -> None:
    """With exclusive classes the decision is the argmax class even under 0.5 (never p >= 0.5 per class)."""
    from chestxray.data.catalog import load_catalog
    from chestxray.data.shards import read_manifest
    from chestxray.explain.explanations import select_split_targets

    classes = ["NORMAL", "BACTERIA", "VIRUS"]
    run, _ = synth_run
    prepared = json.loads((run / "bundle" / "card.json").read_text())["prepared"]
    card = {"architecture": "test", "num_labels": 3, "in_chans": 1, "image_size": SIZE, "resize": "pad",
            "normalization": "gray", "labels": classes, "task": "multiclass", "thresholds": None,
            "prepared": prepared}
    bundle = Bundle(net=_Uncertain().eval(), card=card, path=tmp_path)
    paths, _ = _write_images(tmp_path / "images")
    truth = pd.DataFrame({"NORMAL": [1, 0], "BACTERIA": [0, 1], "VIRUS": [0, 0]}, index=["img_0.png", "img_1.png"])
    results = explain_images(bundle, paths[:2], label="NORMAL", out_dir=tmp_path / "out", truth=truth)
    assert [r.probability for r in results] == pytest.approx([0.4368, 0.4368], abs=1e-4)  # argmax, under 0.5
    assert [r.caption.outcome for r in results] == ["TP", "FP"]  # p >= 0.5 would have said FN and TN
    assert "argmax class NORMAL -> positive" in results[0].caption.lines()[-1]
    table = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert table["outcome"].tolist() == ["TP", "FP"] and table["threshold"].isna().all()

    train = load_catalog(read_manifest(prepared)["catalog"]).table.query("split == 'train'").head(3)
    probs = np.array([[0.40, 0.35, 0.25], [0.30, 0.45, 0.25], [0.20, 0.30, 0.50]])  # only one class reaches 0.5
    scores = pd.DataFrame({"image_id": train["image_id"].tolist(), "NORMAL": [1, 1, 0], "BACTERIA": [0, 0, 0],
                           "VIRUS": [0, 0, 1], **{f"p_{c}": probs[:, j] for j, c in enumerate(classes)}})
    picked = select_split_targets(bundle, "train", n=3, scores=scores)
    names = dict(zip(train["path"].map(lambda p: Path(p).name), train["image_id"]))
    got = [(names[p.name], lab) for p, lab in picked]
    ids = scores["image_id"].tolist()
    # TP: image 0 NORMAL (argmax 0.40), image 2 VIRUS (0.50); FP: image 1 BACTERIA (argmax, truth NORMAL);
    # FN: image 1 NORMAL (true, not the argmax)
    assert got == [(ids[2], "VIRUS"), (ids[1], "BACTERIA"), (ids[1], "NORMAL")]
