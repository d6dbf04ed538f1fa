"""Which subgroup each image belongs to, for an audit: attributes read from the catalog and put into plain groups.

An attribute is a catalog column, named by what it means (sex, age, view, location, site, manufacturer, ...) or by
its own name (any column the catalog carries: NIH's age/sex/view, a CSV's location or a --keep-cols column, a DICOM
header's manufacturer). Values become groups: sex as F / M / other (NIH 'Patient Gender', DICOM PatientSex), age in
bands of 20 years (0-20, 20-40, 40-60, 60-80, 80+; [low, high) years), text as written (stripped, view upper-cased),
other numbers with more than MAX_LEVELS distinct values in quartiles. A missing value belongs to no group: that image
leaves that attribute's comparison (the count is kept), never forms an 'unknown' group that would be compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from chestxray.data.labels import closest
from chestxray.errors import DataError

AGE_EDGES: tuple[float, ...] = (0, 20, 40, 60, 80)
KNOWN: tuple[str, ...] = ("sex", "age", "view", "location", "site", "source", "manufacturer", "race", "ethnicity")
ALIASES: dict[str, tuple[str, ...]] = {  # attribute -> catalog columns that may hold it, first found wins
    "sex": ("sex", "Patient Gender", "PatientSex", "gender"),
    "age": ("age", "Patient Age", "PatientAge"),
    "view": ("view", "View Position", "ViewPosition"),
    "manufacturer": ("manufacturer", "Manufacturer"),
}
MAX_LEVELS = 12  # a numeric column with more distinct values is put in quartiles
_SEX = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}


@dataclass(frozen=True)
class Attribute:
    """One attribute of every image: its group (NaN where unknown), the catalog column it came from and how."""

    name: str
    column: str
    groups: pd.Series  # one entry per image (object dtype), NaN = unknown
    how: str  # e.g. "bands of 20 years", "as written"

    @property
    def levels(self) -> list[str]:
        """The groups present, in a reading order (age bands by age, others by size, largest first)."""
        counts = self.groups.value_counts(dropna=True)
        if self.name == "age" or self.how.startswith(("bands", "quartiles")):
            return [g for g in _band_order(self.groups) if g in counts.index]
        return [str(g) for g in counts.index]

    @property
    def unknown(self) -> int:
        """Images whose group is unknown (left out of this attribute)."""
        return int(self.groups.isna().sum())


def age_band(age: pd.Series, edges: Sequence[float] = AGE_EDGES) -> pd.Series:
    """'0-20', '20-40', ..., '80+' for ages in years ([low, high)); NaN for a missing or negative age."""
    years = pd.to_numeric(age, errors="coerce")
    names = [f"{int(lo)}-{int(hi)}" for lo, hi in zip(edges[:-1], edges[1:])] + [f"{int(edges[-1])}+"]
    idx = np.searchsorted(np.asarray(edges, dtype=float), years.to_numpy(dtype=float), side="right") - 1
    ok = years.notna().to_numpy() & (idx >= 0)
    return pd.Series(np.where(ok, np.array(names, dtype=object)[np.clip(idx, 0, len(names) - 1)], None),
                     index=age.index, dtype=object).where(ok)


def sex_group(values: pd.Series) -> pd.Series:
    """F / M for the usual spellings (F, Female, M, Male, any case); other values as written; blanks NaN."""
    text = values.astype("string").str.strip()
    mapped = text.str.lower().map(_SEX)
    out = mapped.fillna(text).astype(object)
    return out.where(text.notna() & (text != ""))


def _text_group(values: pd.Series, upper: bool = False) -> pd.Series:
    """Stripped text (upper-cased for views: 'pa' and 'PA' are one group); blanks NaN."""
    text = values.astype("string").str.strip()
    text = text.str.upper() if upper else text
    return text.astype(object).where(text.notna() & (text != ""))


def _quartiles(values: pd.Series) -> pd.Series:
    """Quartile bins of a numeric column, named by their range ('12.0-30.5')."""
    bins = pd.qcut(values, 4, duplicates="drop")
    return bins.map(lambda b: f"{b.left:.4g}-{b.right:.4g}" if pd.notna(b) else None).astype(object)


def _band_order(groups: pd.Series) -> list[str]:
    """Band names in numeric order of their lower edge."""
    names = [str(g) for g in groups.dropna().unique()]

    def low(name: str) -> float:
        try:
            return float(name.split("-")[0].rstrip("+"))
        except ValueError:
            return float("inf")

    return sorted(names, key=low)


def canonical(name: str) -> str:
    """The attribute a name means: 'View Position' / 'PatientSex' / 'Patient Age' -> view / sex / age, else itself."""
    for attr, names in ALIASES.items():
        if name.strip().lower() in {n.lower() for n in names}:
            return attr
    return name.strip()


def find_column(table: pd.DataFrame, name: str) -> str | None:
    """The catalog column holding attribute `name` (its aliases first, then the name itself, any capitalisation)."""
    lower = {c.lower(): c for c in table.columns}
    for candidate in (*ALIASES.get(canonical(name).lower(), ()), name):
        if candidate in table.columns:
            return candidate
        if candidate.lower() in lower:
            return lower[candidate.lower()]
    return None


def make_attribute(table: pd.DataFrame, name: str, ignore: Sequence[str] = ()) -> Attribute:
    """The attribute `name` of every row of `table` (DataError naming the columns there are, less `ignore`d ones such
    as labels and scores, when none holds it)."""
    name = canonical(name)
    column = find_column(table, name)
    if column is None:
        meta = [c for c in table.columns if c not in ("image_id", "path", "patient_id", "split", *ignore)]
        raise DataError(f"no catalog column for attribute {name!r}{closest(name, meta)} (columns: {meta}); a CSV "
                        "catalog keeps other columns with 'chestxray catalog csv ... --keep-cols NAME'")
    values = table[column]
    key = name.lower()
    if key == "sex":
        return Attribute("sex", column, sex_group(values), "F / M (usual spellings), others as written")
    if key == "age":
        return Attribute("age", column, age_band(values), "bands of 20 years: [low, high)")
    numeric = pd.to_numeric(values, errors="coerce")
    if values.notna().any() and numeric.notna().sum() == values.notna().sum() and numeric.nunique() > MAX_LEVELS:
        return Attribute(name, column, _quartiles(numeric), "quartiles")
    return Attribute(name, column, _text_group(values, upper=key == "view"), "as written")


def default_attributes(table: pd.DataFrame) -> list[str]:
    """The KNOWN attributes the table carries with at least two groups (what `audit` uses without --by)."""
    found = []
    for name in KNOWN:
        if find_column(table, name) is not None and make_attribute(table, name).groups.nunique() >= 2:
            found.append(name)
    return found


def resolve_attributes(table: pd.DataFrame, by: Sequence[str] | None = None, ignore: Sequence[str] = ()
                       ) -> list[Attribute]:
    """Attributes to audit for the rows of `table`: those named in `by`, else default_attributes (DataError when none;
    `ignore`: columns that are not attributes, e.g. labels and scores, left out of the message)."""
    names = [canonical(b) for b in by if b.strip()] if by else default_attributes(table)
    if not names:
        meta = [c for c in table.columns if c not in ("image_id", "path", "patient_id", "split", *ignore)]
        raise DataError(f"the catalog carries no attribute to audit (looked for {list(KNOWN)}; columns: {meta}); "
                        "name a column with --by, or keep one in the catalog with --keep-cols")
    return [make_attribute(table, n, ignore) for n in dict.fromkeys(names)]
