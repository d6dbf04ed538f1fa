"""Source readers: NIH table (both CSV versions, nested/flat images, metadata-only), class folders, any CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.data.catalog import load_catalog
from chestxray.data.labels import NIH14
from chestxray.data.sources import read_csv_table, read_folder, read_nih, write_catalog
from chestxray.data.sources.folders import patient_ids
from chestxray.data.split import assign_splits
from chestxray.errors import ConfigError, DataError

# Published counts from nih-metadata/SOURCE.md (images with each finding).
NIH_COUNTS = {"No Finding": 60361, "Infiltration": 19894, "Effusion": 13317, "Atelectasis": 11559, "Nodule": 6331,
              "Mass": 5782, "Pneumothorax": 5302, "Consolidation": 4667, "Pleural_Thickening": 3385,
              "Cardiomegaly": 2776, "Emphysema": 2516, "Edema": 2303, "Fibrosis": 1686, "Pneumonia": 1431, "Hernia": 227}
HEADER_2017 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)
    return path


def _nih_2017(tmp_path: Path, rows: list[str]) -> Path:
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text(HEADER_2017 + "".join(r + "\n" for r in rows), encoding="utf-8")
    return csv


def test_nih_full_table_metadata_only(shared_data: Path) -> None:
    catalog = read_nih(shared_data / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz")
    table = catalog.table
    assert len(table) == 112_120
    assert table["patient_id"].nunique() == 30_805
    assert catalog.labels == NIH14 and catalog.task == "multilabel"
    counts = dict(zip(catalog.labels, catalog.label_matrix.sum(0).tolist()))
    counts["No Finding"] = int((catalog.label_matrix.sum(1) == 0).sum())
    assert counts == NIH_COUNTS
    assert (table["path"] == "").all() and catalog.info["metadata_only"]
    assert {"age", "sex", "view", "follow_up"} <= set(table.columns)
    assert set(table["view"]) == {"PA", "AP"} and table["age"].max() > 90


def test_nih_sample_nested_and_flat_images(shared_data: Path) -> None:
    csv = shared_data / "nih-chestxray14" / "labels.csv"
    nested = read_nih(csv, shared_data / "nih-chestxray14")  # images/ below the given folder
    flat = read_nih(csv, shared_data / "nih-chestxray14" / "images")
    for catalog in (nested, flat):
        assert len(catalog.table) == 816 and catalog.table["patient_id"].nunique() == 226
        assert catalog.info["missing_images"] == []
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in catalog.table["path"].head(20))
    assert nested.table["path"].tolist() == flat.table["path"].tolist()
    assert int((nested.label_matrix.sum(1) == 0).sum()) == 390


def test_nih_2017_layout_nested_folders_and_missing_images(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "images_001" / "images" / "00000001_000.png")
    _png(tmp_path / "imgs" / "images_002" / "images" / "00000002_000.png")
    csv = _nih_2017(tmp_path, ["00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,2682,2749,0.143,0.143,",
                               "00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.168,0.168,",
                               "00000003_000.png,Hernia,0,3,45,F,PA,2500,2048,0.168,0.168,"])
    catalog = read_nih(csv, tmp_path / "imgs")
    assert catalog.table["image_id"].tolist() == ["00000001_000.png", "00000002_000.png"]
    row = catalog.table.iloc[0]
    assert row["Cardiomegaly"] == 1 and row["Effusion"] == 1 and row[list(NIH14)].sum() == 2
    assert catalog.table.iloc[1][list(NIH14)].sum() == 0
    assert catalog.info["missing_images"] == ["00000003_000.png"]
    out = write_catalog(assign_splits(catalog, seed=0), tmp_path / "cat")
    assert pd.read_csv(out / "missing_images.csv")["image_id"].tolist() == ["00000003_000.png"]
    loaded = load_catalog(out)
    assert loaded.info["missing_images"]["count"] == 1 and len(loaded.table) == 2
    table = pd.read_csv(out / "catalog.csv")
    table.loc[0, "Cardiomegaly"] = None  # an empty cell: the label is missing for that image (not negative)
    table.to_csv(out / "catalog.csv", index=False)
    assert load_catalog(out).annotated.sum() == 2 * len(loaded.labels) - 1
    table.loc[0, "Cardiomegaly"] = 2
    table.to_csv(out / "catalog.csv", index=False)
    with pytest.raises(DataError, match=r"catalog\.csv: label column\(s\) \['Cardiomegaly'\] hold values other than 0/1"):
        load_catalog(out)
    (out / "catalog.json").write_text('{"format": "chestxray-catalog/1"}')
    with pytest.raises(DataError, match=r"catalog\.json: no 'labels' list"):
        load_catalog(out)


def test_nih_views_and_max_patients(shared_data: Path) -> None:
    csv = shared_data / "nih-chestxray14" / "labels.csv"
    assert len(read_nih(csv, views=["pa"]).table) == 487
    a = read_nih(csv, max_patients=10, seed=1).table
    b = read_nih(csv, max_patients=10, seed=1).table
    c = read_nih(csv, max_patients=10, seed=2).table
    assert a["patient_id"].nunique() == 10 and a["image_id"].tolist() == b["image_id"].tolist()
    assert set(a["patient_id"]) != set(c["patient_id"])
    with pytest.raises(DataError, match="no rows with View Position in \\['LL'\\]"):
        read_nih(csv, views=["LL"])
    with pytest.raises(ConfigError, match="--max-patients"):
        read_nih(csv, max_patients=0)


def test_nih_official_split_kept_val_carved_by_patient(shared_data: Path, tmp_path: Path) -> None:
    csv = shared_data / "nih-chestxray14" / "labels.csv"
    labels = pd.read_csv(csv)
    test_patients = sorted(labels["Patient ID"].unique())[::4]
    is_test = labels["Patient ID"].isin(test_patients)
    (tmp_path / "test_list.txt").write_text("\n".join(labels.loc[is_test, "Image Index"]) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(labels.loc[~is_test, "Image Index"]) + "\n")
    catalog = assign_splits(read_nih(csv, official_split=tmp_path), seed=0)
    table = catalog.table
    assert set(table.loc[table["split"] == "test", "image_id"]) == set(labels.loc[is_test, "Image Index"])
    assert (table["split"] == "val").sum() > 0 and "source split kept" in catalog.info["split"]["method"]
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    with pytest.raises(DataError, match="nowhere/train_val_list.txt: no such file"):
        read_nih(csv, official_split=tmp_path / "nowhere")


@pytest.mark.parametrize("rows, message", [
    (["a.png,Efusion|Nodule,0,1,5,M,PA,1,1,1,1,"], "unknown finding name\\(s\\) 'Efusion' \\(did you mean 'Effusion'\\?\\)"),
    (["a.png,Nodule,0,1,5,M,PA,1,1,1,1,", "a.png,Mass,0,1,5,M,PA,1,1,1,1,"], "'Image Index' has 1 duplicate.*a.png"),
    ([], "header but no rows"),
    (["a.png,,0,1,5,M,PA,1,1,1,1,"], "'Finding Labels' is empty in file row\\(s\\) \\[2\\]"),
])
def test_nih_bad_tables(tmp_path: Path, rows: list[str], message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_nih(_nih_2017(tmp_path, rows))


def test_unreadable_files_name_the_file_and_problem(tmp_path: Path) -> None:
    missing_col = tmp_path / "nocol.csv"
    missing_col.write_text("Image Index,Finding Labels\na.png,Nodule\n")
    with pytest.raises(DataError, match="nocol.csv: no column 'Patient ID'"):
        read_nih(missing_col)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(HEADER_2017.encode() + "ä.png,Nodule,0,1,5,M,PA,1,1,1,1,\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.csv: not UTF-8"):
        read_nih(latin)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv: the file is empty"):
        read_nih(empty)
    with pytest.raises(DataError, match="nowhere.csv: no such file"):
        read_nih(tmp_path / "nowhere.csv")
    with pytest.raises(DataError, match="no such image folder"):
        read_nih(_nih_2017(tmp_path, ["a.png,Nodule,0,1,5,M,PA,1,1,1,1,"]), tmp_path / "noimages")
    with pytest.raises(DataError, match="none of the 1 rows has an image file"):
        read_nih(_nih_2017(tmp_path, ["a.png,Nodule,0,1,5,M,PA,1,1,1,1,"]), tmp_path)


def test_kaggle_pneumonia_folder(shared_data: Path) -> None:
    catalog = read_folder(shared_data / "kaggle-chest-xray-pneumonia")
    table = catalog.table
    assert (len(table), table["patient_id"].nunique()) == (1269, 981)
    assert catalog.labels == ("PNEUMONIA",) and catalog.task == "binary"
    assert int((table["PNEUMONIA"] == 0).sum()) == 329
    assert table.loc[table["PNEUMONIA"] == 0, "patient_id"].nunique() == 326
    assert (table["split"] == "").all()


def test_patient_rule_from_file_names() -> None:
    stems = pd.Series(["person1_bacteria_1", "person100_virus_184", "IM-0115-0001", "NORMAL2-IM-0927-0001", "scan7",
                       "00000011_000", "00000011_001"])
    assert patient_ids(stems).tolist() == ["person1", "person100", "IM-0115", "NORMAL2-IM-0927", "scan7",
                                           "00000011", "00000011"]
    assert patient_ids(stems, r"^(\w+?)\d").tolist()[:2] == ["person", "person"]
    with pytest.raises(ConfigError, match="needs a group"):
        patient_ids(stems, r"^person")


def test_folder_counts_names_without_a_patient_rule_and_files_that_are_not_images(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """NIH-style names are one patient by default; names no rule matches are counted and warned about (with the
    option that fixes them); .txt/.csv files are reported by count, not silently dropped."""
    for cls, stem in (("NORMAL", "00000011_000"), ("NORMAL", "00000011_001"), ("NORMAL", "scanB"),
                      ("Mass", "00000012_000"), ("Mass", "scanA"), ("Mass", "00000013_002")):
        _png(tmp_path / cls / f"{stem}.png")
    for name in ("NORMAL/notes.txt", "Mass/list.csv", "Mass/b.TXT", "NORMAL/.DS_Store"):
        (tmp_path / name).write_text("x")
    with caplog.at_level("WARNING"):
        catalog = read_folder(tmp_path)
    table = catalog.table.set_index("image_id")
    assert table.loc["NORMAL/00000011_000.png", "patient_id"] == table.loc["NORMAL/00000011_001.png", "patient_id"]
    assert catalog.table["patient_id"].nunique() == 5
    assert catalog.info["patient_rule_unmatched"] == {"count": 2, "examples": ["scanA", "scanB"]}
    assert catalog.info["skipped"]["not_images"] == {".txt": 2, ".csv": 1}
    assert "2 of 6 file name(s) match no patient rule, e.g. scanA, scanB" in caplog.text
    assert "--patient-regex" in caplog.text and "3 file(s) that are not images (.txt 2, .csv 1)" in caplog.text
    ruled = read_folder(tmp_path, patient_regex=r"^(\w+?)_?\d*$")
    assert ruled.info["patient_rule_unmatched"]["count"] == 0
    assert ruled.table.set_index("image_id").loc["Mass/scanA.png", "patient_id"] == "scanA"


def test_folder_with_source_split_and_multiclass(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("NORMAL", "BACTERIA", "VIRUS"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{cls.lower()}{i}_{split}.png")
    catalog = read_folder(tmp_path, patient_regex=r"^([a-z]+\d+_\w+)")
    assert catalog.task == "multiclass" and catalog.labels == ("NORMAL", "BACTERIA", "VIRUS")  # normal first
    assert (catalog.label_matrix.sum(1) == 1).all()
    split = assign_splits(catalog, seed=0).table
    assert (split["split"] == "test").sum() == 6 and (split["split"] == "val").sum() > 0
    assert set(split.loc[split["image_id"].str.startswith("test/"), "split"]) == {"test"}


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere: no such folder"):
        read_folder(tmp_path / "nowhere")
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "NORMAL" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        read_folder(tmp_path)
    _png(tmp_path / "NORMAL" / "a.png")
    with pytest.raises(DataError, match="only one class folder"):
        read_folder(tmp_path)


def test_dicom_files_accepted_as_image_paths(shared_data: Path, tmp_path: Path) -> None:
    dicoms = sorted((shared_data / "cxr-dicom-samples").glob("*.dcm"))
    assert len(dicoms) == 2
    for cls, source in zip(("NORMAL", "PNEUMOTHORAX"), dicoms):
        (tmp_path / "root" / cls).mkdir(parents=True)
        (tmp_path / "root" / cls / source.name).symlink_to(source)
    catalog = read_folder(tmp_path / "root")
    assert catalog.labels == ("PNEUMOTHORAX",) and len(catalog.table) == 2
    assert all(p.endswith(".dcm") for p in catalog.table["path"])
    table = tmp_path / "dicom.csv"
    table.write_text("file,patient,Pneumothorax\n" + "".join(f"{d.name},p1,0\n" for d in dicoms))
    from_csv = read_csv_table(table, "file", "patient", label_cols=["Pneumothorax"],
                              images_root=shared_data / "cxr-dicom-samples")
    assert len(from_csv.table) == 2 and from_csv.task == "binary" and from_csv.info["missing_images"] == []


def test_covid_csv_findings(shared_data: Path) -> None:
    catalog = read_csv_table(shared_data / "covid-chestxray-dataset" / "metadata.csv", "image_file", "patientid",
                             findings_col="finding", sep=",/")
    table = catalog.table
    assert (len(table), table["patient_id"].nunique()) == (253, 128)
    counts = dict(zip(catalog.labels, catalog.label_matrix.sum(0).tolist()))
    assert counts["COVID-19"] == 189 and counts["ARDS"] == 13 and "No Finding" not in counts
    assert int((catalog.label_matrix.sum(1) == 0).sum()) == 10
    assert {"age", "sex", "view"} <= set(table.columns) and catalog.info["missing_images"] == []


def test_csv_table_errors(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    table = tmp_path / "t.csv"
    table.write_text("img,pid,x\na.png,1,2\n")
    with pytest.raises(DataError, match="label column 'x' holds values other than 0/1"):
        read_csv_table(table, "img", "pid", label_cols=["x"])
    with pytest.raises(DataError, match="no column 'patient'"):
        read_csv_table(table, "img", "patient", label_cols=["x"])
    with pytest.raises(DataError, match="either label columns"):
        read_csv_table(table, "img", "pid")
    table.write_text("img,pid,f\na.png,1,Nodule\nb.png,2,Mass\n")
    catalog = read_csv_table(table, "img", "pid", findings_col="f")
    assert catalog.labels == ("Mass", "Nodule") and catalog.info["missing_images"] == ["b.png"]
    # the wrong column as paths: the hint names --path-col, not a metadata-only mode this command does not have
    table.write_text("img,pid,f\na.png,1,Nodule\nb.png,2,Mass\n")
    with pytest.raises(DataError, match=r"none of the 2 rows has an image file .*--path-col 'pid' values are read "
                                        r"relative to .*check --path-col and --images-root") as err:
        read_csv_table(table, "pid", "img", findings_col="f")
    assert "metadata" not in str(err.value)


def test_empty_patient_ids_are_an_error_or_an_explicit_reported_choice(tmp_path: Path) -> None:
    """A row without a patient id used to become a patient of its own silently, and turned every id into '2.0'."""
    for name in "abcd":
        _png(tmp_path / f"{name}.png")
    table = tmp_path / "t.csv"
    table.write_text("img,pid,Mass\na.png,1,0\nb.png,,1\nc.png,007,0\nd.png, ,1\n")
    with pytest.raises(DataError, match=r"column 'pid' is empty in 2 row\(s\) \(file rows \[3, 5\]\); fill in the "
                                        r"patient ids, or pass --missing-patient own .* or --missing-patient drop"):
        read_csv_table(table, "img", "pid", label_cols=["Mass"])
    own = read_csv_table(table, "img", "pid", label_cols=["Mass"], missing_patient="own")
    assert own.table["patient_id"].tolist() == ["1", "missing:b.png", "7", "missing:d.png"]  # 007 is patient 7
    assert own.info["missing_patient"] == {"policy": "own", "rows": 2}
    drop = read_csv_table(table, "img", "pid", label_cols=["Mass"], missing_patient="drop")
    assert drop.table["patient_id"].tolist() == ["1", "7"] and drop.table["image_id"].tolist() == ["a.png", "c.png"]
    out = tmp_path / "cat"
    write_catalog(assign_splits(own, seed=0), out)
    assert load_catalog(out).table["patient_id"].tolist() == own.table["patient_id"].tolist()  # read back as text
    with pytest.raises(ConfigError, match="--missing-patient 'guess'"):
        read_csv_table(table, "img", "pid", label_cols=["Mass"], missing_patient="guess")


def test_nih_empty_patient_id_names_the_row_and_ids_stay_text(tmp_path: Path) -> None:
    rows = ["a.png,Nodule,0,1,5,M,PA,1,1,1,1,", "b.png,Mass,0,,5,M,PA,1,1,1,1,", "c.png,Mass,0,2,5,M,PA,1,1,1,1,"]
    csv = _nih_2017(tmp_path, rows)
    with pytest.raises(DataError, match=r"column 'Patient ID' is empty in 1 row\(s\) \(file rows \[3\]\)"):
        read_nih(csv)
    catalog = read_nih(csv, missing_patient="own")
    assert catalog.table["patient_id"].tolist() == ["1", "missing:b.png", "2"]  # never '1.0' / '2.0'


@pytest.mark.parametrize("sep", [";", "\t"])
def test_semicolon_and_tab_separated_tables_are_read(tmp_path: Path, sep: str) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    table = tmp_path / "t.csv"
    table.write_text(sep.join(["img", "pid", "f"]) + "\n" + sep.join(["a.png", "01", "Nodule|Mass"]) + "\n"
                     + sep.join(["b.png", "02", "No Finding"]) + "\n")
    catalog = read_csv_table(table, "img", "pid", findings_col="f")
    assert catalog.labels == ("Nodule", "Mass") or catalog.labels == ("Mass", "Nodule")
    assert catalog.table["patient_id"].tolist() == ["1", "2"] and catalog.label_matrix.sum() == 2
