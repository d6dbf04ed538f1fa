"""Per-source evaluation of a merged run, and external validation on data the run never saw (issue 20)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.catalog import Catalog, save_catalog
from chestxray.data.split import assign_splits
from chestxray.errors import DataError
from chestxray.evaluation.evaluate import evaluate_run
from chestxray.evaluation.external import evaluate_external
from chestxray.evaluation.metrics import summarize
from tests.merged_data import _source

N_BOOT = 40


@pytest.fixture(scope="module")
def merged_run(merged_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn-tiny trained one epoch on the 'full' and 'eff' sources of the merged synthetic data, then evaluated."""
    from chestxray.training.config import resolve_config
    from chestxray.training.train import train

    out = tmp_path_factory.mktemp("merged-run") / "run"
    config = resolve_config(prepared=str(merged_prepared), model="cnn-tiny", epochs=1, batch_size=32, lr=3e-3,
                            num_workers=0, augment="none", mlflow=False, progress=False, out=str(out),
                            sources="full,eff", pos_weight=True)
    train(config)
    evaluate_run(out, n_boot=N_BOOT, ood=False)
    return out


def test_metrics_skip_unannotated_images() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((120, 2)) < 0.4).astype(float)
    s = np.clip(y * 0.3 + rng.random((120, 2)) * 0.7, 0, 1)
    y[:50, 1] = np.nan  # the first 50 images do not annotate finding 1
    summary = summarize(y, s, ["a", "b"], [str(i) for i in range(120)], {"a": 0.5, "b": 0.5}, n_boot=N_BOOT)
    b = summary.row("b")
    assert b.n == 70 and b.positives == int(np.nansum(y[:, 1]))
    assert b.auroc.value == pytest.approx(roc_auc_score(y[50:, 1], s[50:, 1]))
    assert b.counts.tp + b.counts.fp + b.counts.fn + b.counts.tn == 70
    assert summary.row("micro").n == 120 + 70
    scrambled = y.copy()
    scrambled[:50, 1] = 1  # whatever the missing cells would say changes nothing once they are missing
    assert summarize(np.where(np.isnan(y), np.nan, scrambled), s, ["a", "b"], [str(i) for i in range(120)],
                     n_boot=N_BOOT).row("b").auroc.value == b.auroc.value


def test_evaluate_reports_each_source_on_its_annotated_images(merged_run: Path) -> None:
    metrics = json.loads((merged_run / "eval" / "metrics.json").read_text())
    pred = pd.read_csv(merged_run / "eval" / "predictions.csv")
    assert set(metrics["by_source"]) == {"eff", "full", "nod"} and set(pred["source"]) == {"eff", "full", "nod"}
    assert metrics["threshold_sources"] == ["eff", "full"]  # chosen on the run's own validation sources
    for source, summary in metrics["by_source"].items():
        part = pred[pred["source"] == source]
        for row in summary["rows"]:
            if row["kind"] != "finding":
                continue
            y = part[row["finding"] if "finding" in row else row["name"]]
            if y.isna().all():
                assert row["auroc"]["value"] is None and "not annotated" in row["auroc"]["reason"]
                continue
            keep = y.notna()
            if y[keep].nunique() == 2:
                expected = roc_auc_score(y[keep], part.loc[keep, f"p_{row['name']}"])
                assert row["auroc"]["value"] == pytest.approx(expected), (source, row["name"])
    eff = next(r for r in metrics["by_source"]["eff"]["rows"] if r["name"] == "Effusion")
    assert eff["n"] == int(pred.loc[pred["source"] == "eff", "Effusion"].notna().sum())
    card = json.loads((merged_run / "bundle" / "card.json").read_text())
    assert card["sources"]["trained_on"] == ["eff", "full"] and "nod" in card["sources"]["all"]
    assert set(card["metrics"]["evaluation"]["by_source"]) == {"eff", "full", "nod"}


def _external_catalog(root: Path, labels: tuple[str, ...], seed: int) -> Path:
    catalog = _source(root, "site", 60, seed, labels, 10)
    save_catalog(assign_splits(catalog, ratios=(0, 0, 1)), root / "catalog")  # an all-test catalog
    return root / "catalog"


def test_external_validation_never_changes_the_bundle(merged_run: Path, tmp_path: Path) -> None:
    site = _external_catalog(tmp_path, ("Effusion", "Nodule"), seed=11)
    card = (merged_run / "bundle" / "card.json").read_bytes()
    result = evaluate_external(merged_run, site, n_boot=N_BOOT)
    assert (merged_run / "bundle" / "card.json").read_bytes() == card
    assert result.mapping == {"Effusion": "Effusion", "Nodule": "Nodule"}
    assert result.overlap["checked"] and result.overlap["identical_images"] == 0
    table = result.thresholds.set_index("label")
    run_thresholds = json.loads(card)["thresholds"]
    assert table.loc["Effusion", "run_threshold"] == pytest.approx(run_thresholds["Effusion"])
    assert table.loc["Effusion", "site_threshold_from"].startswith("the evaluated images")  # no site val split
    pred = pd.read_csv(result.out_dir / "predictions.csv")
    assert result.summary.row("Effusion").auroc.value == pytest.approx(roc_auc_score(pred["Effusion"],
                                                                                     pred["p_Effusion"]))
    written = json.loads((result.out_dir / "metrics.json").read_text())
    assert written["not_evaluated"] and "Cardiomegaly" in written["not_evaluated"][-1]


def test_external_refuses_training_images_and_unmappable_labels(merged_run: Path, merged_prepared: Path,
                                                                 tmp_path: Path) -> None:
    catalog = merged_prepared.parent / "catalog"  # the run's own images, all of them
    with pytest.raises(DataError, match="identical to images the run trained or validated on"):
        evaluate_external(merged_run, catalog, n_boot=N_BOOT)
    dropped = evaluate_external(merged_run, catalog, overlap="drop", n_boot=N_BOOT, name="dropped")
    pred = pd.read_csv(dropped.out_dir / "predictions.csv")
    assert set(pred["source"]) == {"eff", "full", "nod"}  # the test patients, and 'nod' that it never trained on
    table = pd.read_csv(catalog / "catalog.csv")
    trained = table[table["source"].isin(["full", "eff"]) & table["split"].isin(["train", "val"])]
    assert not set(pred["patient_id"]) & set(trained["patient_id"])
    site = _external_catalog(tmp_path, ("Fracture",), seed=5)
    with pytest.raises(DataError, match=r"none of the model's labels .* can be read from the data's labels "
                                        r"\['Fracture'\]"):
        evaluate_external(merged_run, site, n_boot=N_BOOT)
    out = CliRunner().invoke(app, ["evaluate", str(merged_run), "--data", str(site), "--n-boot", "20"])
    assert out.exit_code == 1 and "Traceback" not in out.output and "--map FILE" in " ".join(out.output.split())


def test_cli_external_with_a_label_map_and_an_all_test_folder_catalog(merged_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from chestxray.data.synth import draw_image

    rng = np.random.default_rng(3)
    for k in range(24):  # class folders: EFFUSION / NORMAL
        cls = "EFFUSION" if k % 2 else "NORMAL"
        image, _ = draw_image({"Effusion"} if k % 2 else set(), 32, rng)
        (tmp_path / "site" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "site" / cls / f"p{k}_{cls}.png")
    runner = CliRunner()
    made = runner.invoke(app, ["catalog", "folder", str(tmp_path / "site"), "--ratios", "0,0,1", "--out",
                               str(tmp_path / "cat")])
    assert made.exit_code == 0, made.output
    assert "test 24" in made.output
    mapping = tmp_path / "map.yaml"
    mapping.write_text("map:\n  EFFUSION: Effusion\n", encoding="utf-8")
    out = runner.invoke(app, ["evaluate", str(merged_run), "--data", str(tmp_path / "cat"), "--map", str(mapping),
                              "--n-boot", "20", "--name", "folder-site"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "labels compared: Effusion" in out.output and "at this site" in out.output
    assert "the bundle is unchanged" in out.output
    assert (merged_run / "external" / "folder-site" / "thresholds.csv").is_file()


def test_site_calibration_reads_site_labels_through_the_same_vocabulary() -> None:
    from chestxray.evaluation.site_data import _mapped_truth

    site = pd.DataFrame({"image_id": list("abcd"), "patient_id": list("abcd"), "COVID-19": [1, 0, 0, 0],
                         "ARDS": [0, 1, 0, 0], "Pneumonia": [0, 0, 1, 0]})
    mapped = _mapped_truth(site, ["COVID-19", "ARDS", "Pneumonia"], ["PNEUMONIA"], "site")  # a Kaggle model
    assert mapped["PNEUMONIA"].tolist() == [1, 0, 1, 0]
    with pytest.raises(DataError, match="does not give every model label"):
        _mapped_truth(site, ["COVID-19", "ARDS", "Pneumonia"], ["PNEUMONIA", "Effusion"], "site")


def test_report_shows_each_source(merged_run: Path) -> None:
    from chestxray.report.run_report import write_report

    html = write_report(merged_run).read_text(encoding="utf-8")
    assert 'id="per-source"' in html
    for source in ("eff", "full", "nod"):
        assert f"<h4>{source} (" in html
    assert "sources eff, full" in html  # thresholds from the run's own validation sources


def test_source_probe_finds_the_source_when_features_carry_it(merged_run: Path) -> None:
    from chestxray.evaluation.source_probe import source_probe

    rng = np.random.default_rng(0)
    sources = np.repeat(["a", "b", "c"], 60)
    patients = np.array([f"{s}{i // 2}" for i, s in enumerate(sources)])
    noise = rng.normal(size=(180, 8))
    carrying = noise.copy()
    carrying[:, 0] += 3.0 * (sources == "a")  # one feature per source shifts: the features carry the source
    carrying[:, 1] += 3.0 * (sources == "b")
    told = source_probe(carrying, sources, patients).set_index("source")
    blind = source_probe(noise, sources, patients).set_index("source")
    assert told.loc["a", "auroc"] > 0.95 and told.loc["b", "auroc"] > 0.95
    assert all(abs(v - 0.5) < 0.2 for v in blind["auroc"])
    probe = json.loads((merged_run / "eval" / "metrics.json").read_text())["source_probe"]
    assert {r["source"] for r in probe["rows"]} == {"eff", "full", "nod"}
    assert (merged_run / "eval" / "source_probe.csv").is_file()


def test_subgroup_audit_leaves_unannotated_images_out() -> None:
    from chestxray.evaluation.audit import audit_subgroups

    rng = np.random.default_rng(2)
    n = 160
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "patient_id": [f"p{k // 2}" for k in range(n)],
                          "source": np.where(np.arange(n) < 80, "x", "y"), "sex": np.tile(["M", "F"], n // 2)})
    a = (rng.random(n) < 0.4).astype(float)
    b = (rng.random(n) < 0.4).astype(float)
    b[frame["source"] == "y"] = np.nan  # source y does not annotate b
    frame["a"], frame["b"] = a, b
    frame["p_a"] = np.clip(0.5 * a + 0.5 * rng.random(n), 0, 1)
    frame["p_b"] = np.clip(0.5 * np.nan_to_num(b) + 0.5 * rng.random(n), 0, 1)
    table = audit_subgroups(frame, ["a", "b"], {"a": 0.5, "b": 0.5}, by=["sex"], n_boot=30).table
    row = table[(table["subgroup"] == "M") & (table["finding"] == "b")].iloc[0]
    males = (frame["sex"] == "M") & frame["b"].notna()
    assert row["images"] == int(males.sum()) == 40
    assert row["positives"] == int(frame.loc[males, "b"].sum())
    assert row["auroc"] == pytest.approx(roc_auc_score(frame.loc[males, "b"], frame.loc[males, "p_b"]))
