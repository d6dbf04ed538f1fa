"""The label vocabulary: default map, refinement rule, user YAML, and the CheXpert uncertain-label policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chestxray.data.labelmap import read_label_map, source_labels, to_vocabulary
from chestxray.data.sources.chexpert import apply_policies, parse_policy, read_chexpert
from chestxray.errors import ConfigError, DataError

NAN = np.nan


def _convert(source: str, labels: list[str], rows: list[list[float]], vocabulary: list[str], label_map=None):
    resolved = source_labels(source, labels, label_map or read_label_map(None))
    return to_vocabulary(np.array(rows, dtype=float), resolved, vocabulary)


def test_kaggle_binary_annotates_pneumonia_only() -> None:
    vocab = ["Atelectasis", "Pneumonia", "COVID-19"]
    out = _convert("kaggle", ["PNEUMONIA"], [[1], [0]], vocab)
    np.testing.assert_array_equal(out[:, 1], [1, 0])
    assert np.isnan(out[:, [0, 2]]).all()  # NORMAL: Pneumonia 0, the rest missing, never negative


def test_kaggle_subtypes_normal_class_and_refinements() -> None:
    vocab = ["Pneumonia", "Bacterial Pneumonia", "Viral Pneumonia"]
    out = _convert("kaggle", ["NORMAL", "BACTERIA", "VIRUS"], [[1, 0, 0], [0, 1, 0], [0, 0, 1]], vocab)
    np.testing.assert_array_equal(out, [[0, 0, 0], [1, 1, 0], [1, 0, 1]])


def test_covid_organism_where_given() -> None:
    vocab = ["Pneumonia", "Viral Pneumonia", "COVID-19", "Bacterial Pneumonia", "Streptococcus", "ARDS"]
    labels = ["COVID-19", "Streptococcus", "Pneumonia", "ARDS"]
    rows = [[1, 0, 0, 0],   # COVID-19: viral, not bacterial
            [0, 1, 0, 0],   # Streptococcus
            [0, 0, 1, 0],   # plain "Pneumonia": organism not given -> refinements missing
            [0, 0, 0, 0],   # No Finding: negative everywhere the source annotates
            [1, 0, 0, 1]]   # COVID-19, ARDS
    out = _convert("covid", labels, rows, vocab)
    np.testing.assert_array_equal(out[0], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(out[1], [1, 0, 0, 1, 1, 0])
    assert out[2, 0] == 1 and np.isnan(out[2, 1:5]).all() and out[2, 5] == 0
    np.testing.assert_array_equal(out[3], [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[4], [1, 1, 1, 0, 0, 1])


def test_missing_source_label_stays_missing_and_chexpert_names_map_to_nih() -> None:
    out = _convert("chex", ["Pleural Effusion", "Pneumonia"], [[NAN, 1], [0, 0]], ["Effusion", "Pneumonia", "Mass"])
    assert np.isnan(out[0, 0]) and out[0, 1] == 1 and out[1, 0] == 0
    assert np.isnan(out[:, 2]).all()


def test_user_yaml_overrides_adds_negative_and_refuses_bad_keys(tmp_path: Path) -> None:
    good = tmp_path / "map.yaml"
    good.write_text("map:\n  Opacity: Lung Opacity\nsources:\n  kaggle:\n    map: {PNEUMONIA: [Pneumonia, Childhood]}\n"
                    "    negative: [COVID-19]\n", encoding="utf-8")
    label_map = read_label_map(good)
    out = _convert("kaggle", ["PNEUMONIA"], [[1], [0]], ["Pneumonia", "Childhood", "COVID-19"], label_map)
    np.testing.assert_array_equal(out, [[1, 1, 0], [0, 0, 0]])  # COVID-19 known negative (collected before 2019)
    other = _convert("site", ["Opacity"], [[1]], ["Lung Opacity"], label_map)
    assert other[0, 0] == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("mapping: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key"):
        read_label_map(bad)
    with pytest.raises(DataError, match="negative"):
        _convert("kaggle", ["PNEUMONIA"], [[1]], ["Pneumonia", "COVID-19"], read_label_map(_write(
            tmp_path / "neg.yaml", "sources:\n  kaggle:\n    negative: [Pneumonia]\n")))


def test_two_parents_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "two.yaml", "map:\n  A: [X, Z]\n  B: [Y, Z]\n")
    with pytest.raises(ConfigError, match="refinement of both"):
        source_labels("s", ["A", "B"], read_label_map(path))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_uncertain_policies_do_what_they_say() -> None:
    coded = pd.DataFrame({"Edema": [1, 0, -1, None], "Atelectasis": [-1, -1, None, 1]})
    ones = apply_policies(coded, parse_policy("ones", ("Edema", "Atelectasis")), "negative")
    zeros = apply_policies(coded, parse_policy("zeros", ("Edema", "Atelectasis")), "negative")
    ignore = apply_policies(coded, parse_policy("ignore", ("Edema", "Atelectasis")), "missing")
    np.testing.assert_array_equal(ones[:, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(zeros[:, 0], [1, 0, 0, 0])
    assert ignore[0, 0] == 1 and ignore[1, 0] == 0 and np.isnan(ignore[2:, 0]).all()  # -1 and blank missing
    mixed = apply_policies(coded, parse_policy("zeros,Atelectasis=ones", ("Edema", "Atelectasis")), "negative")
    np.testing.assert_array_equal(mixed[:, 1], [1, 1, 0, 1])
    np.testing.assert_array_equal(mixed[:, 0], zeros[:, 0])
    healthy = apply_policies(coded, parse_policy("ignore", ("Edema", "Atelectasis")), "missing",
                             pd.Series([0, 0, 0, 1]))
    assert healthy[3, 0] == 0  # No Finding = 1: a blank is negative whatever the blank policy
    with pytest.raises(ConfigError, match="U-Ones"):
        parse_policy("maybe", ("Edema",))
    with pytest.raises(ConfigError, match="not a label column"):
        parse_policy("ignore,Edemaa=ones", ("Edema",))


def test_read_chexpert_table(tmp_path: Path) -> None:
    from PIL import Image

    rows = []
    for i, (edema, effusion) in enumerate([(1, -1), (-1, 0), (0, None), (None, 1)]):
        rel = f"train/patient{i // 2:05d}/study1/view1_frontal.jpg".replace("view1", f"view{i}")
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / rel)
        rows.append({"Path": rel, "Sex": "Female", "Age": 60 + i, "Frontal/Lateral": "Frontal", "AP/PA": "AP",
                     "No Finding": None, "Edema": edema, "Pleural Effusion": effusion})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    catalog = read_chexpert(tmp_path / "train.csv", uncertain="ignore", blank="negative")
    assert catalog.labels == ("Edema", "Pleural Effusion")
    assert catalog.table["patient_id"].tolist() == ["patient00000", "patient00000", "patient00001", "patient00001"]
    edema = catalog.table["Edema"].to_numpy()
    assert edema[0] == 1 and np.isnan(edema[1]) and edema[2] == 0 and edema[3] == 0
    assert catalog.info["uncertain"]["uncertain_cells"] == {"Edema": 1, "Pleural Effusion": 1}
    assert {"sex", "age", "view"} <= set(catalog.table.columns)
