"""Subgroup audit statistics on simulated data where the truth is known: a planted under-diagnosed group is found
with the right sign, equal groups are not flagged more often than the nominal rate, the minimum-sample rule holds
per group, and the point values equal a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from chestxray.data.catalog import Catalog, save_catalog
from chestxray.evaluation.audit import audit_run_subgroups, audit_subgroups, write_subgroup_audit
from chestxray.evaluation.disparities import ANY, make_tasks, subgroup_table
from chestxray.evaluation.subgroups import make_attribute
from chestxray.evaluation.thresholds import choose_threshold

LABELS = ["A", "B", "C"]


def simulate(rng: np.random.Generator, n_pat: int = 200, gap: float = 0.0, rho: float = 0.5) -> pd.DataFrame:
    """Predictions of a 3-finding model for patients with 1-3 images each; signal 1.5 (log-odds per finding), lowered
    by `gap` for female patients; patient-level noise correlation rho. Columns as evaluate writes them + sex, age."""
    sex = rng.choice(["Female", "Male"], n_pat)
    age = rng.uniform(5, 95, n_pat)
    pid = np.repeat(np.arange(n_pat), rng.integers(1, 4, n_pat))
    y = (rng.random((len(pid), 3)) < np.array([0.3, 0.2, 0.1])).astype(np.uint8)
    signal = np.where(sex[pid] == "Female", 1.5 - gap, 1.5)[:, None]
    noise = np.sqrt(rho) * rng.normal(size=(n_pat, 3))[pid] + np.sqrt(1 - rho) * rng.normal(size=y.shape)
    p = 1 / (1 + np.exp(-(signal * y + noise - 1)))
    frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(len(pid))], "patient_id": [f"p{k}" for k in pid]})
    frame[LABELS] = y
    frame[[f"p_{x}" for x in LABELS]] = p
    return frame.assign(sex=sex[pid], age=age[pid])


@pytest.fixture(scope="module")
def thresholds() -> dict[str, float]:
    """Thresholds chosen once on a simulated validation split (all patients together, as evaluate does)."""
    val = simulate(np.random.default_rng(100), 400)
    return {x: choose_threshold(val[x], val[f"p_{x}"]) for x in LABELS}


def test_planted_underdiagnosis_is_flagged_with_the_right_sign(thresholds: dict[str, float]) -> None:
    frame = simulate(np.random.default_rng(1), gap=1.0)
    result = audit_subgroups(frame, LABELS, thresholds, by=["sex"], n_boot=400, seed=0)
    table = result.table.set_index(["subgroup", "finding"])
    female = table.loc[("F", ANY)]  # 'Female' is read as the group F
    assert female["fnr_diff"] > 0 and female["fnr_diff_low"] > 0  # more sick women called normal, interval > 0
    assert female["underdiagnosis"] > table.loc[("M", ANY), "underdiagnosis"]
    assert female["auroc_diff"] < 0 and female["auroc_diff_high"] < 0
    assert "under-diagnosis higher" in female["flag"] and female["fnr_p_holm"] < 0.05
    assert "under-diagnosis lower" in table.loc[("M", ANY), "flag"]  # the mirror row says the same from the other side
    assert any(s.startswith("sex = F vs M, any finding: under-diagnosis higher") for s in result.sentences())
    assert not any(s.startswith("sex = M") for s in result.sentences())  # said once, from the side that fares worse


def test_equal_groups_are_not_flagged_more_often_than_nominal(thresholds: dict[str, float]) -> None:
    """40 datasets without any gap, sex (per patient) and age bands (5 groups): the share of datasets with any flag
    after Holm stays at or below alpha (with binomial slack), and so does each raw test's rejection rate."""
    rng = np.random.default_rng(2)
    any_flag, raw, tests = 0, 0, 0
    for seed in range(40):
        frame = simulate(rng)
        table = audit_subgroups(frame, LABELS, thresholds, by=["sex", "age"], n_boot=200, seed=seed).table
        any_flag += int((table["flag"] != "").any())
        p = table[["auroc_p", "fnr_p"]].to_numpy().ravel()
        raw += int((p[np.isfinite(p)] < 0.05).sum())
        tests += int(np.isfinite(p).sum())
    assert any_flag <= 5  # P(Binomial(40, 0.05) > 5) = 0.014
    assert tests > 500 and raw / tests <= 0.08


def test_point_values_equal_a_direct_computation(thresholds: dict[str, float]) -> None:
    frame = simulate(np.random.default_rng(3))
    tasks = make_tasks(frame[LABELS].to_numpy(), frame[[f"p_{x}" for x in LABELS]].to_numpy(), LABELS, thresholds)
    table = subgroup_table(frame, tasks, [make_attribute(frame, "sex")], n_boot=50).set_index(["subgroup", "finding"])
    for sex, group in (("F", "Female"), ("M", "Male")):
        part = frame[frame["sex"] == group]
        y, p = part["B"].to_numpy(), part["p_B"].to_numpy()
        row = table.loc[(sex, "B")]
        assert row["images"] == len(part) and row["patients"] == part["patient_id"].nunique()
        assert row["auroc"] == pytest.approx(roc_auc_score(y, p))
        assert row["fnr"] == pytest.approx(np.mean(p[y == 1] < thresholds["B"]))
        assert row["prevalence"] == pytest.approx(y.mean())
        sick = part[LABELS].to_numpy().any(1)
        called_normal = ~(part[[f"p_{x}" for x in LABELS]].to_numpy() >= [thresholds[x] for x in LABELS]).any(1)
        assert row["underdiagnosis"] == pytest.approx(called_normal[sick].mean())


def test_too_few_patients_in_a_group_gives_words_not_intervals(thresholds: dict[str, float]) -> None:
    frame = simulate(np.random.default_rng(4))
    frame["site"] = np.where(frame["patient_id"].isin(["p1", "p2", "p3"]), "tiny", "big")
    table = audit_subgroups(frame, LABELS, thresholds, by=["site"], n_boot=100).table
    tiny = table[table["subgroup"] == "tiny"]
    assert tiny["auroc_low"].isna().all() and tiny["fnr_p"].isna().all() and tiny["fnr_diff_low"].isna().all()
    assert tiny["note"].str.contains("too few").all()
    big = table[(table["subgroup"] == "big") & (table["finding"] == "A")].iloc[0]
    assert np.isfinite(big["auroc_low"])  # the big group has its own interval, but no test against 'tiny'
    assert np.isnan(big["auroc_p"]) and "too few" in big["note"]


def test_case_mix_standardisation_removes_a_gap_made_by_the_mix_of_findings() -> None:
    """Same detector in both groups, but group X's sick images carry three findings and group Y's one: X is rarely
    called normal. The raw under-diagnosis gap is large; standardised to the split's case mix it nearly vanishes."""
    rng = np.random.default_rng(5)
    n = 3000
    group = np.where(np.arange(n) < n // 2, "X", "Y")
    sick = rng.random(n) < 0.5
    k = np.where(group == "X", rng.choice([1, 3], n, p=[0.2, 0.8]), rng.choice([1, 3], n, p=[0.8, 0.2]))
    y = np.zeros((n, 3), dtype=np.uint8)
    for i in np.flatnonzero(sick):
        y[i, rng.choice(3, k[i], replace=False)] = 1
    p = 1 / (1 + np.exp(-(1.0 * y + rng.normal(size=y.shape) - 1.5)))
    frame = pd.DataFrame({"image_id": np.arange(n).astype(str), "patient_id": np.arange(n).astype(str),
                          "grp": group})
    frame[LABELS] = y
    frame[[f"p_{x}" for x in LABELS]] = p
    table = audit_subgroups(frame, LABELS, {x: 0.5 for x in LABELS}, by=["grp"], n_boot=200).table
    row = table[(table["subgroup"] == "Y") & (table["finding"] == ANY)].iloc[0]
    assert row["fnr_diff"] > 0.1 and row["fnr_diff_low"] > 0
    assert abs(row["pc_underdiagnosis_diff"]) < 0.04 and row["pc_underdiagnosis_diff_low"] < 0 < row[
        "pc_underdiagnosis_diff_high"]


def test_audit_of_a_run_folder_writes_table_json_and_figure(tmp_path: Path, thresholds: dict[str, float]) -> None:
    """The run-level entry point: evaluate's stored predictions joined with a synthetic catalog's sex column."""
    frame = simulate(np.random.default_rng(6), gap=1.0)
    catalog = Catalog(frame[["image_id", "patient_id", *LABELS, "sex", "age"]].assign(path="", split="test"),
                      labels=tuple(LABELS))
    save_catalog(catalog, tmp_path / "catalog")
    (tmp_path / "run" / "eval").mkdir(parents=True)
    frame.drop(columns=["sex", "age"]).to_csv(tmp_path / "run" / "eval" / "predictions.csv", index=False)
    (tmp_path / "run" / "eval" / "metrics.json").write_text(json.dumps(
        {"split": "test", "labels": LABELS, "thresholds": thresholds, "task": "multilabel"}), encoding="utf-8")
    result = audit_run_subgroups(tmp_path / "run", catalog=tmp_path / "catalog", n_boot=200)
    assert [a.name for a in result.attributes] == ["sex", "age"]  # the known attributes the catalog carries
    written = write_subgroup_audit(result, tmp_path / "audit")
    table = pd.read_csv(written["subgroups"])
    assert list(table.columns[:14]) == ["attribute", "subgroup", "finding", "images", "patients", "positives",
                                        "positive_patients", "negative_patients", "prevalence", "auroc", "auroc_low",
                                        "auroc_high", "sensitivity", "specificity"]
    assert {"fnr", "underdiagnosis", "pc_underdiagnosis", "flag"} <= set(table.columns)
    assert len(table) == (2 + 5) * 4  # (2 sexes + 5 age bands) x (3 findings + any finding)
    record = json.loads(written["json"].read_text(encoding="utf-8"))
    assert record["unit"] == "patient" and "positive" in record["rule"] and record["comparisons"] > 0
    assert written["figure"].stat().st_size > 5000
