"""The command line answers help and bad arguments without loading torch, Lightning or MLflow (timing: bench/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "lightning", "mlflow", "torchvision", "albumentations", "sklearn", "matplotlib")


def _loaded_after(code: str) -> list[str]:
    """Heavy modules in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [m for m in done.stdout.rsplit("LOADED:", 1)[1].strip().split(",") if m]


def test_cli_import_loads_nothing_heavy() -> None:
    assert _loaded_after("import chestxray.cli") == []


def test_bad_train_and_explain_arguments_fail_before_torch(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "catalog.csv").write_text("image_id,path,patient_id,split\n")
    cases = {
        "['train', MISSING, '--model', 'nope']": "unknown model 'nope'",
        "['train', MISSING, '--lr', '-1']": "--lr must be a positive number",
        "['train', MISSING, '--augment', 'heavy']": "--augment 'heavy' is not one of",
        "['train', MISSING]": "does not exist",
        "['train', CATALOG]": "is a catalog, not a PREPARED folder; prepare it first: 'chestxray prepare",
        "['explain', MISSING, '--split', 'test']": "neither a run folder",
        "['compare', MISSING, '--models', 'nope']": "unknown model 'nope'",
    }
    for argv, message in cases.items():
        code = (f"from typer.testing import CliRunner\nfrom chestxray.cli import app\nMISSING, CATALOG = {str(missing)!r}, "
                f"{str(catalog)!r}\nr = CliRunner().invoke(app, {argv})\nassert r.exit_code == 1, r.output\n"
                f"assert {message!r} in r.output, r.output")
        assert _loaded_after(code) == [], argv
