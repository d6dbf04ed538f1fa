"""The in-distribution score on real inputs: a small CNN trained on the Kaggle pediatric CXRs (64 px, seeded) marks
photographs, scikit-image's sample images and an MRI slice shipped with matplotlib, inverted radiographs and
lateral views from the COVID collection as unlike its training images; ordinary test CXRs mostly are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from chestxray.data.samples import non_cxr_images
from chestxray.inference.ood import FALSE_ALARM, fit_reference, load_reference, save_reference


@pytest.fixture(scope="module")
def kaggle_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    from chestxray.data.catalog import save_catalog
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits
    from chestxray.evaluation.evaluate import evaluate_run
    from chestxray.training.config import resolve_config
    from chestxray.training.train import train

    root = tmp_path_factory.mktemp("ood")
    catalog = assign_splits(read_folder(shared_data / "kaggle-chest-xray-pneumonia"), seed=0)
    save_catalog(catalog, root / "catalog")
    prepare_dataset(catalog, root / "prep", size=64, workers=2)
    train(resolve_config(prepared=str(root / "prep"), model="cnn-small", epochs=2, batch_size=32, lr=2e-3,
                         augment="none", num_workers=0, mlflow=False, progress=False, out=str(root / "run")))
    evaluate_run(root / "run", n_boot=20)  # fits the OOD reference beside the bundle
    return root / "run", catalog.table


@pytest.mark.slow
def test_ood_separates_cxrs_from_other_images(kaggle_run, shared_data: Path, tmp_path: Path) -> None:
    from chestxray.inference.predict import predict_images

    run, table = kaggle_run
    ref = load_reference(run / "bundle")
    assert ref is not None and ref.false_alarm == FALSE_ALARM and ref.info["n_train"] > 800
    test = table.loc[table["split"] == "test", "path"].tolist()
    covid = pd.read_csv(shared_data / "covid-chestxray-dataset" / "metadata.csv")
    lateral = [shared_data / "covid-chestxray-dataset" / p for p in covid.loc[covid["view"] == "L", "image_file"]]
    groups = {"test": test, "non-cxr": non_cxr_images(tmp_path), "lateral": lateral}
    scores = {k: predict_images(run, v)["in_distribution"].to_numpy() for k, v in groups.items()}
    inverted = tmp_path / "inverted"
    inverted.mkdir()
    for p in test[:100]:
        Image.fromarray(255 - np.asarray(Image.open(p).convert("L"))).save(inverted / (Path(p).stem + ".png"))
    scores["inverted"] = predict_images(run, sorted(inverted.iterdir()))["in_distribution"].to_numpy()

    def auroc(other: str) -> float:
        y = np.r_[np.zeros(len(scores["test"])), np.ones(len(scores[other]))]
        return roc_auc_score(y, -np.r_[scores["test"], scores[other]])

    def flagged(group: str) -> float:
        return float(np.mean(ref.unusual(scores[group])))

    print({k: round(auroc(k), 3) for k in ("non-cxr", "inverted", "lateral")}, {k: flagged(k) for k in scores})
    assert flagged("test") < 0.05  # 1 % expected
    assert flagged("non-cxr") > 0.9 and auroc("non-cxr") > 0.95
    # the 1 % line is the tail of 127 validation images, so the share of a group that crosses it moves with any
    # change to the model (heads near zero, label-blind splits: inverted 96 % -> 52 %, lateral 16 % -> 0 %) while the
    # ranking holds; the ranking is asserted strictly, the shares as measured (docs/new-site.md)
    assert flagged("inverted") > 0.4 and auroc("inverted") > 0.95
    assert auroc("lateral") > 0.85


def test_scores_are_uniform_for_inputs_like_the_validation_images() -> None:
    rng = np.random.default_rng(0)
    cov = np.diag(np.linspace(0.5, 3, 8))
    def layers(n: int, shift: float = 0.0) -> dict[str, np.ndarray]:  # two correlated "layers" of one input
        x = rng.multivariate_normal(np.full(8, shift), cov, size=n)
        return {"stage0": x, "penultimate": x[:, :4] ** 2}

    ref = fit_reference(layers(2000), layers(1000), false_alarm=0.05)
    s = ref.scores(layers(4000))
    assert abs(np.mean(ref.unusual(s)) - 0.05) < 0.015  # the false-alarm rate chosen on validation holds
    assert abs(np.mean(s < 0.5) - 0.5) < 0.03
    assert ref.unusual(ref.scores(layers(200, shift=4.0))).mean() > 0.95


def test_reference_round_trips_through_safetensors_and_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train = {"stage0": rng.normal(size=(300, 5)), "penultimate": rng.normal(size=(300, 3))}
    val = {"stage0": rng.normal(size=(100, 5)), "penultimate": rng.normal(size=(100, 3))}
    ref = fit_reference(train, val)
    save_reference(ref, tmp_path)
    again = load_reference(tmp_path)
    new = {"stage0": rng.normal(size=(50, 5)), "penultimate": rng.normal(size=(50, 3))}
    np.testing.assert_allclose(again.scores(new), ref.scores(new), atol=1e-6)
    (tmp_path / "ood.json").write_text("{")
    with pytest.raises(Exception, match="damaged or outdated OOD reference"):
        load_reference(tmp_path)


def test_too_few_validation_images_mark_what_is_beyond_all_of_them() -> None:
    rng = np.random.default_rng(2)
    ref = fit_reference({"penultimate": rng.normal(size=(500, 4))}, {"penultimate": rng.normal(size=(59, 4))})
    assert ref.rate == pytest.approx(1 / 60) and ref.false_alarm == FALSE_ALARM
    far = ref.scores({"penultimate": rng.normal(size=(20, 4)) + 10})
    assert ref.unusual(far).all()
