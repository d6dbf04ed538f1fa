"""Attributes read from a catalog and put into plain groups: age bands, sex spellings, views, any column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chestxray.errors import DataError
from chestxray.evaluation.subgroups import age_band, default_attributes, make_attribute, resolve_attributes, sex_group


def test_age_bands_are_twenty_years_wide_and_half_open() -> None:
    ages = pd.Series([0, 19.9, 20, 39, 40, 60, 79.99, 80, 104, np.nan, -3])
    assert age_band(ages).tolist()[:9] == ["0-20", "0-20", "20-40", "20-40", "40-60", "60-80", "60-80", "80+", "80+"]
    assert age_band(ages).iloc[9:].isna().all()  # unknown and impossible ages belong to no band


def test_sex_spellings_map_to_f_and_m_and_blanks_are_unknown() -> None:
    got = sex_group(pd.Series(["F", "female", "M", " Male ", "O", "", None]))
    assert got.tolist()[:5] == ["F", "F", "M", "M", "O"] and got.iloc[5:].isna().all()


def test_named_columns_aliases_and_levels() -> None:
    table = pd.DataFrame({"image_id": list("abcdefgh"), "patient_id": list("aabbccdd"), "Finding": [0, 1] * 4,
                          "Patient Gender": list("FMFMFMFM"), "view": ["pa", "PA", "AP", "AP", "PA", "PA", "AP", None],
                          "score_x": np.linspace(0, 1, 8), "hospital": list("NNNSSSSS")})
    assert make_attribute(table, "sex").column == "Patient Gender"
    view = make_attribute(table, "View Position")  # NIH's name means the view attribute
    assert view.name == "view" and view.levels == ["PA", "AP"] and view.unknown == 1
    assert make_attribute(table, "hospital").levels == ["S", "N"]  # largest first
    numbers = make_attribute(table.assign(score_x=np.arange(8) * 1.5), "score_x")
    assert numbers.how == "as written"  # few distinct values stay as they are
    many = pd.DataFrame({"x": np.arange(40, dtype=float)})
    assert make_attribute(many, "x").how == "quartiles" and len(make_attribute(many, "x").levels) == 4
    assert default_attributes(table) == ["sex", "view"]
    with pytest.raises(DataError, match="no catalog column for attribute 'ward'.*keep-cols"):
        resolve_attributes(table, ["ward"], ignore=["Finding"])
