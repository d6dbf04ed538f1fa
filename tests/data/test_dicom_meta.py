"""Patient and acquisition attributes read from DICOM headers at catalog time (for subgroup audits)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from chestxray.data.catalog import load_catalog
from chestxray.data.sources import read_csv_table, read_folder, write_catalog
from chestxray.data.sources.dicom_meta import dicom_age, read_dicom_attributes
from chestxray.errors import DataError


def write_dicom(path: Path, value: int = 90, **tags: str) -> Path:
    """A tiny 8-bit MONOCHROME2 DICOM written by pydicom, with the given header tags (PatientSex='F', ...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    pixels = np.full((8, 8), value, dtype=np.uint8)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for key, value_ in tags.items():
        setattr(ds, key, value_)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(("text", "years"), [("058Y", 58.0), ("006M", 0.5), ("014D", 14 / 365.25), ("002W", 14 / 365.25),
                                             ("45", 45.0), ("", math.nan), ("unknown", math.nan)])
def test_dicom_age_strings_in_years(text: str, years: float) -> None:
    got = dicom_age(text)
    assert (math.isnan(got) and math.isnan(years)) or got == pytest.approx(years)


def test_header_tags_become_catalog_columns_for_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "folders"
    write_dicom(root / "NORMAL" / "a-0001.dcm", PatientSex="F", PatientAge="034Y", ViewPosition="PA",
                Manufacturer="Acme Medical")
    write_dicom(root / "NORMAL" / "b-0001.dcm", PatientSex="M", PatientAge="071Y", ViewPosition="AP",
                Manufacturer="Other Corp")
    write_dicom(root / "PNEUMONIA" / "c-0001.dcm", PatientSex="F", PatientAge="006M", ViewPosition="AP")  # no maker
    catalog = read_folder(root)
    table = catalog.table.set_index("image_id")
    assert table.loc["NORMAL/a-0001.dcm", ["sex", "view", "manufacturer"]].tolist() == ["F", "PA", "Acme Medical"]
    assert table.loc["NORMAL/b-0001.dcm", "age"] == 71.0
    assert table.loc["PNEUMONIA/c-0001.dcm", "age"] == pytest.approx(0.5)
    assert pd.isna(table.loc["PNEUMONIA/c-0001.dcm", "manufacturer"])
    write_catalog(catalog, tmp_path / "catalog")  # and they survive the round trip to disk
    again = load_catalog(tmp_path / "catalog").table.set_index("image_id")
    assert again.loc["NORMAL/a-0001.dcm", "manufacturer"] == "Acme Medical" and again["age"].max() == 71.0


def test_csv_values_win_and_headers_fill_the_gaps(tmp_path: Path) -> None:
    write_dicom(tmp_path / "img" / "x.dcm", PatientSex="M", PatientAge="050Y", ViewPosition="AP", Manufacturer="Acme")
    write_dicom(tmp_path / "img" / "y.dcm", PatientSex="F", PatientAge="030Y", ViewPosition="PA")
    csv = tmp_path / "table.csv"
    csv.write_text("file,patient,finding,sex,hospital\nimg/x.dcm,p1,Effusion,F,North\nimg/y.dcm,p2,No Finding,,South\n",
                   encoding="utf-8")
    catalog = read_csv_table(csv, "file", "patient", findings_col="finding", keep_cols=["hospital"])
    table = catalog.table.set_index("image_id")
    assert table.loc["img/x.dcm", "sex"] == "F"  # the table's value wins over the header's 'M'
    assert table.loc["img/y.dcm", "sex"] == "F"  # the header fills the table's gap
    assert table["view"].tolist() == ["AP", "PA"] and table["age"].tolist() == [50.0, 30.0]
    assert table["hospital"].tolist() == ["North", "South"]  # --keep-cols carries any column
    with pytest.raises(DataError, match="no column 'ward'"):
        read_csv_table(csv, "file", "patient", findings_col="finding", keep_cols=["ward"])


def test_png_catalogs_get_no_header_columns(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("NORMAL", "PNEUMONIA"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / cls / "x-0001.png")
    assert not {"sex", "manufacturer"} & set(read_folder(tmp_path).table.columns)


def test_real_dicom_header_gives_its_view(shared_data: Path) -> None:
    path = next((shared_data / "cxr-dicom-samples").glob("1.2.*.dcm"))
    found = read_dicom_attributes(path)
    assert found["view"] == "PA"  # labels.csv of the sample lists view_position PA
    assert found["sex"] == "M" and found["age"] == 62.0  # PatientSex M, PatientAge 62 in the header (pydicom)
    assert set(found) == {"sex", "age", "view", "manufacturer"}
