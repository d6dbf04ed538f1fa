"""`chestxray audit RUN`: the subgroup audit, the shortcut measurements and the explanation coverage of a run, written
as one folder (RUN/audit by default: subgroups.csv, audit.json, subgroups.png, shortcut tables, audit.html).

The folder is written whole (chestxray.files.atomic_folder): a killed audit leaves the previous one or none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chestxray.evaluation.audit import AUDIT_JSON, SubgroupAudit, audit_subgroups, load_audit_frame, write_subgroup_audit
from chestxray.evaluation.shortcut_audit import audit_shortcuts
from chestxray.explain.coverage import MEANING, coverage_text, explain_coverage
from chestxray.files import atomic_folder, write_csv, write_json
from chestxray.report.audit_report import PAGE, run_audit_dir, write_audit_page

log = logging.getLogger(__name__)


@dataclass
class AuditOutcome:
    """Where the audit went and what it found (the subgroup table and findings in words)."""

    out_dir: Path
    page: Path
    subgroups: SubgroupAudit
    shortcut_findings: list[str] = field(default_factory=list)
    coverage_text: str = ""


def run_audit(run_dir: str | Path, split: str = "test", by: Sequence[str] | None = None, out: str | Path | None = None,
              catalog: str | Path | None = None, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
              shortcuts: bool = True, max_images: int = 400, coverage_images: int = 48) -> AuditOutcome:
    """Audit RUN on `split` into `out` (default RUN/audit): subgroups always; with `shortcuts`, the acquisition-feature
    strata, the counterfactual re-render and the feature probe on up to `max_images` images of the split, and the share
    of empty Grad-CAM maps per outcome on up to `coverage_images` images x every label (these score images with the
    run's bundle)."""
    run = Path(run_dir)
    target = Path(out) if out is not None else run_audit_dir(run)
    joined, metrics = load_audit_frame(run, split, catalog)
    labels, thresholds = list(metrics["labels"]), metrics.get("thresholds") or {}
    task = str(metrics.get("task") or "multilabel")
    result = audit_subgroups(joined, labels, thresholds, by, task, split, n_boot, alpha=alpha, seed=seed)
    outcome = AuditOutcome(target, target / PAGE, result)
    with atomic_folder(target) as folder:
        write_subgroup_audit(result, folder)
        record = json.loads((folder / AUDIT_JSON).read_text(encoding="utf-8"))
        if shortcuts:
            found = audit_shortcuts(run / "bundle", joined, labels, thresholds, task, max_images,
                                    n_boot=min(n_boot, 500), seed=seed)
            write_csv(folder / "shortcuts.csv", found.strata)
            write_csv(folder / "counterfactual.csv", found.counterfactual)
            write_csv(folder / "probe.csv", found.probe)
            outcome.shortcut_findings = found.findings
            record.update(shortcut_findings=found.findings, shortcut_images=found.images,
                          shortcut_skipped=found.skipped, scoring_parity=found.parity)
            coverage = explain_coverage(run / "bundle", joined, labels, thresholds, coverage_images, seed=seed,
                                        multiclass=task == "multiclass")
            write_csv(folder / "explain_coverage.csv", coverage)
            outcome.coverage_text = f"{coverage_text(coverage)}. {MEANING}" if len(coverage) else ""
            record["coverage_text"] = outcome.coverage_text
        write_json(folder / AUDIT_JSON, record)
        write_audit_page(folder, title=f"Audit of {run.resolve().name} ({split} split)")
    log.info("audit of %s written to %s", run, target)
    return outcome

