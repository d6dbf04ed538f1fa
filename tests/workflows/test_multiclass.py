"""The multi-class chain on real data: Kaggle NORMAL / BACTERIA / VIRUS (from file names) -> catalog -> prepare ->
train (softmax, cnn-tiny, 32 px) -> evaluate (one-vs-rest AUROC, K x K confusion) -> report -> predict, via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score
from typer.testing import CliRunner

from chestxray.cli import app

CLASSES = ["NORMAL", "BACTERIA", "VIRUS"]
PER_CLASS = 40  # images linked per class: small and quick, enough for every class in every split


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{args[0]} failed: {result.output}"
    return result.output


def _subset(kaggle: Path, out: Path) -> Path:
    """The first PER_CLASS files of each class, linked (not copied) into the Kaggle folder layout."""
    picks = {"NORMAL": sorted((kaggle / "NORMAL").glob("*.jpeg"))[:PER_CLASS],
             "bacteria": [p for p in sorted((kaggle / "PNEUMONIA").glob("*.jpeg")) if "_bacteria_" in p.name][:PER_CLASS],
             "virus": [p for p in sorted((kaggle / "PNEUMONIA").glob("*.jpeg")) if "_virus_" in p.name][:PER_CLASS]}
    for cls, files in picks.items():
        folder = out / ("NORMAL" if cls == "NORMAL" else "PNEUMONIA")
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            (folder / f.name).symlink_to(f)
    return out


@pytest.fixture(scope="module")
def chain(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("multiclass")
    source = _subset(shared_data / "kaggle-chest-xray-pneumonia", root / "kaggle")
    out = {"root": root}
    out["catalog"] = _invoke("catalog", "folder", source, "--kaggle-subtypes", "--ratios", "0.5,0.25,0.25",
                             "--out", root / "catalog")
    _invoke("prepare", root / "catalog", "--size", 32, "--workers", 1, "--out", root / "prepared")
    _invoke("train", root / "prepared", "--model", "cnn-tiny", "--epochs", 2, "--batch-size", 16, "--lr", 3e-3,
            "--augment", "none", "--num-workers", 0, "--no-mlflow", "--no-progress", "--pos-weight",
            "--out", root / "run")
    out["evaluate"] = _invoke("evaluate", root / "run", "--n-boot", 50)
    out["report"] = _invoke("report", root / "run")
    images = sorted((source / "PNEUMONIA").glob("*virus*"))[:2]
    out["predict"] = _invoke("predict", root / "run", root / "none" / "*.png", *images, "--out", root / "predict.csv")
    return out


def test_task_is_recorded_from_catalog_to_bundle(chain: dict) -> None:
    root = chain["root"]
    assert "3 label(s) (multiclass)" in chain["catalog"]
    catalog = json.loads((root / "catalog" / "catalog.json").read_text())
    assert catalog["task"] == "multiclass" and catalog["labels"] == CLASSES
    table = pd.read_csv(root / "catalog" / "catalog.csv")
    assert (table[CLASSES].sum(axis=1) == 1).all()
    assert table.loc[table["image_id"].str.contains("_virus_"), "VIRUS"].all()
    manifest = json.loads((root / "prepared" / "manifest.json").read_text())
    run = json.loads((root / "run" / "run.json").read_text())
    card = json.loads((root / "run" / "bundle" / "card.json").read_text())
    assert manifest["task"] == run["task"] == card["task"] == "multiclass"
    assert card["thresholds"] is None and card["threshold_method"].startswith("argmax")
    assert {"accuracy", "balanced_accuracy"} <= set(card["metrics"]["evaluation"])
    assert card["threshold_tta"] == card["metrics"]["evaluation"]["tta"]  # the TTA the argmax rule was measured with
    logged = pd.concat([pd.read_csv(p) for p in (root / "run" / "logs").rglob("metrics.csv")])
    assert logged["val_accuracy"].dropna().between(0, 1).all() and logged["val_auroc"].notna().any()


def test_evaluation_matches_scikit_learn_on_the_predictions(chain: dict) -> None:
    eval_dir = chain["root"] / "run" / "eval"
    pred = pd.read_csv(eval_dir / "predictions.csv")
    probs = pred[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)  # softmax, not per-label sigmoids
    true, guess = pred[CLASSES].to_numpy().argmax(1), probs.argmax(1)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    block = metrics["multiclass"]
    assert metrics["task"] == "multiclass" and block["decision"] == "argmax"
    assert block["confusion_matrix"] == confusion_matrix(true, guess, labels=[0, 1, 2]).tolist()
    assert block["accuracy"]["value"] == pytest.approx(accuracy_score(true, guess))
    assert block["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(true, guess))
    rows = {r["name"]: r for r in metrics["rows"]}
    short = [c for c in CLASSES if min(rows[c]["positive_patients"], rows[c]["negative_patients"]) < 10]
    if short:  # the minimum-sample rule: no interval, and the words say which classes are short
        assert block["accuracy"]["low"] is None and all(c in block["accuracy"]["reason"] for c in short)
    else:
        assert block["accuracy"]["low"] <= block["accuracy"]["value"] <= block["accuracy"]["high"]
    for k, name in enumerate(CLASSES):
        assert rows[name]["auroc"]["value"] == pytest.approx(roc_auc_score(true == k, probs[:, k]))
    assert rows["macro"]["auroc"]["value"] == pytest.approx(roc_auc_score(true, probs, multi_class="ovr"))
    assert rows["weighted"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(true, probs, multi_class="ovr", average="weighted"))
    assert "normal" not in rows and "micro" not in rows
    assert (eval_dir / "confusion.png").stat().st_size > 1000
    assert "balanced accuracy" in chain["evaluate"] and "thresholds do not apply" in chain["evaluate"]


def test_report_and_predict_show_the_argmax_class(chain: dict) -> None:
    html = (chain["root"] / "run" / "report.html").read_text()
    assert 'id="confusion-table"' in html and "thresholds do not apply" in html and "balanced accuracy" in html
    pred = pd.read_csv(chain["root"] / "predict.csv", keep_default_na=False)
    assert pred["status"].tolist() == ["quarantined", "ok", "ok"]  # a pattern matching nothing is listed first
    ok = pred[pred["status"] == "ok"]
    probs = ok[[f"p_{c}" for c in CLASSES]].astype(float).to_numpy()
    assert ok["predicted_class"].tolist() == [CLASSES[k] for k in probs.argmax(1)]
    assert pred["predicted_class"].iloc[0] == ""
    assert "predicted class" in chain["predict"] and "no thresholds yet" not in chain["predict"]


def test_web_app_answers_with_the_argmax_class(chain: dict, shared_data: Path) -> None:
    from fastapi.testclient import TestClient

    from chestxray.deploy.serve import create_app

    image = sorted((shared_data / "kaggle-chest-xray-pneumonia" / "NORMAL").glob("*.jpeg"))[0]
    with TestClient(create_app(chain["root"] / "run"), base_url="http://localhost") as client:
        body = client.post("/predict", files={"file": image.open("rb")}).json()
    probs = {f["name"]: f["probability"] for f in body["findings"]}
    assert body["task"] == "multiclass" and body["predicted_class"] == max(probs, key=probs.get)
    assert [f["positive"] for f in body["findings"]] == [n == body["predicted_class"] for n in probs]
    assert "thresholds do not apply" in body["note"] and sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
