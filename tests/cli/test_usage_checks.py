"""Every heavy command refuses bad arguments (missing paths, the wrong kind of folder, unknown names and values) with
one line and exit 1 before torch, Lightning or MLflow is imported (timing: bench/bench_startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.test_startup import HEAVY


def usage_folders(tmp: Path) -> dict[str, str]:
    """Folders of each kind a user may pass by mistake: MISSING, a CATALOG, a PREPARED folder, a RUN (bundle card
    only, enough for the checks) and an image file."""
    catalog, prepared, run = tmp / "catalog", tmp / "prepared", tmp / "run"
    for folder in (catalog, prepared, run / "bundle"):
        folder.mkdir(parents=True, exist_ok=True)
    (catalog / "catalog.csv").write_text("image_id,path,patient_id,split\n")
    (prepared / "manifest.json").write_text("{}")
    (run / "bundle" / "card.json").write_text("{}")
    (tmp / "x.png").write_bytes(b"")
    # a finished run (config + bundle) whose model expects 32 px NIH-style labels, and data that does not fit it
    finished = tmp / "finished"
    (finished / "bundle").mkdir(parents=True, exist_ok=True)
    (finished / "config.yaml").write_text(f"prepared: {prepared}\nmodel: cnn-tiny\nout: {finished}\n")
    (finished / "bundle" / "card.json").write_text(json.dumps({"labels": ["Effusion", "Nodule"], "image_size": 32,
                                                               "resize": "crop"}))
    for name, labels, size in (("prepared48", ["Effusion", "Nodule"], 48), ("prepared-other", ["PNEUMONIA"], 32)):
        (tmp / name).mkdir(exist_ok=True)
        (tmp / name / "manifest.json").write_text(json.dumps({"labels": labels, "image_size": size,
                                                              "resize": "crop"}))
    return {"MISSING": str(tmp / "nowhere"), "CATALOG": str(catalog), "PREPARED": str(prepared), "RUN": str(run),
            "IMAGE": str(tmp / "x.png"), "FINISHED": str(finished), "PREPARED48": str(tmp / "prepared48"),
            "PREPARED_OTHER": str(tmp / "prepared-other")}


# argv (with the folder names above) -> what the one line must say
CASES: dict[str, list[tuple[list[str], str]]] = {
    "evaluate": [(["evaluate", "MISSING"], "no such run folder"),
                 (["evaluate", "CATALOG"], "is a catalog, not a run folder"),
                 (["evaluate", "PREPARED"], "is a PREPARED folder, not a run folder"),
                 (["evaluate", "RUN", "--tta", "flip"], "unknown test-time augmentation 'flip'"),
                 (["evaluate", "RUN", "--threshold-method", "best"], "unknown threshold method 'best'"),
                 (["evaluate", "RUN", "--prepared", "MISSING"], "PREPARED folder"),
                 (["evaluate", "RUN", "--batch-size", "0"], "--batch-size must be at least 1"),
                 (["evaluate", "RUN", "--n-boot", "0"], "--n-boot must be at least 10, got 0"),
                 (["evaluate", "FINISHED", "--prepared", "PREPARED48"], "images are 48 px but the bundle"),
                 (["evaluate", "FINISHED", "--prepared", "PREPARED_OTHER"], "labels ['PNEUMONIA'] differ from the "
                                                                            "bundle's ['Effusion', 'Nodule']")],
    "train": [(["train", "PREPARED", "--model", "cnn-tiny", "--out", "FINISHED"], "holds an earlier run and will "
                                                                                   "not be overwritten"),
              (["train", "--resume", "FINISHED"], "no checkpoints/last.ckpt"),
              (["train", "--resume", "FINISHED", "--progress", "false"], "switches such as --progress"),
              (["train", "PREPARED", "--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
              (["train", "PREPARED", "--lr", "inf"], "--lr must be a finite number, got inf")],
    "report": [(["report", "CATALOG"], "is a catalog, not a run folder"),
               (["report", "MISSING"], "no such run folder")],
    "predict": [(["predict", "MISSING", "IMAGE"], "no such model"),
                (["predict", "CATALOG", "IMAGE"], "is a catalog, not a model"),
                (["predict", "RUN", "IMAGE", "--format", "xml"], "--format 'xml' is not one of"),
                (["predict", "RUN", "IMAGE", "--tta", "flip"], "unknown test-time augmentation 'flip'"),
                (["predict", "RUN", "IMAGE", "--batch-size", "0"], "--batch-size must be")],
    "export": [(["export", "MISSING", "--onnx", "m.onnx"], "no such model"),
               (["export", "PREPARED", "--onnx", "m.onnx"], "is a PREPARED folder, not a model"),
               (["export", "RUN"], "nothing to export")],
    "serve": [(["serve", "MISSING"], "no such model"),
              (["serve", "CATALOG"], "is a catalog, not a model"),
              (["serve", "RUN", "--port", "70000"], "--port must be")],
    "study": [(["study", "MISSING", "--out", "MISSING"], "does not exist"),
              (["study", "CATALOG", "--out", "MISSING"], "is a catalog, not a PREPARED folder"),
              (["study", "PREPARED", "--out", "MISSING", "--models", "nope"], "unknown model 'nope'")],
    "tune": [(["tune", "MISSING"], "does not exist"),
             (["tune", "CATALOG"], "is a catalog, not a PREPARED folder"),
             (["tune", "PREPARED", "--model", "nope"], "unknown model 'nope'"),
             (["tune", "PREPARED", "--sampler", "grid"], "--sampler 'grid' is not one of")],
    "prepare": [(["prepare", "MISSING", "--out", "MISSING"], "no such catalog folder"),
                (["prepare", "PREPARED", "--out", "MISSING"], "is a PREPARED folder, not a catalog"),
                (["prepare", "CATALOG", "--out", "CATALOG"], "would write into the catalog"),
                (["prepare", "CATALOG", "--out", "MISSING", "--resize", "squash"], "--resize 'squash' is not one of"),
                (["prepare", "CATALOG", "--out", "MISSING", "--size", "0"], "--size must be"),
                (["prepare", "CATALOG", "--out", "IMAGE"], "is a file, not a folder")],
    "catalog": [(["catalog", "folder", "CATALOG", "--ratios", "1,0,0", "--out", "MISSING"],
                 "leave val and test empty: a catalog to train on needs all three")],
    "verify": [(["verify", "MISSING"], "does not exist"),
               (["verify", "CATALOG"], "is a catalog, not a PREPARED folder")],
    "weights": [(["weights", "fetch", "nope"], "unknown model 'nope'")],
    "ui": [(["ui", "--store", "MISSING"], "no MLflow store"),
           (["ui", "--port", "0"], "--port must be")],
    "demo": [(["demo", "--data", "MISSING"], "no sample collections"),
             (["demo", "--model", "nope"], "unknown model 'nope'"),
             (["demo", "--size", "4"], "--size must be")],
}

PROBE = """
import json, sys
from typer.testing import CliRunner
from chestxray.cli import app
heavy, cases, names = {heavy!r}, json.loads(sys.argv[1]), json.loads(sys.argv[2])
results = []
for argv, message in cases:
    argv = [names.get(a, a) for a in argv]
    r = CliRunner().invoke(app, argv)
    lines = [line for line in r.output.splitlines() if line.strip()]
    results.append({{"argv": argv, "code": r.exit_code, "lines": lines, "ok": message in " ".join(lines),
                    "heavy": [m for m in heavy if m in sys.modules]}})
print("RESULTS:" + json.dumps(results))
"""


def run_cases(cases: list[tuple[list[str], str]], names: dict[str, str], cwd: Path) -> list[dict]:
    """Run the cases in one fresh interpreter (in order), noting after each which heavy modules are loaded."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(cases), json.dumps(names)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.rsplit("RESULTS:", 1)[1])


def test_usage_errors_of_every_heavy_command_come_before_torch(tmp_path: Path) -> None:
    names = usage_folders(tmp_path)
    cases = [case for per_command in CASES.values() for case in per_command]
    problems = []
    for result, (_, message) in zip(run_cases(cases, names, tmp_path), cases, strict=True):
        if result["code"] != 1 or not result["ok"] or len(result["lines"]) != 1 or result["heavy"]:
            problems.append(f"{result['argv']}: exit {result['code']}, loaded {result['heavy']}, expected "
                            f"{message!r} in one line, got {result['lines'][:4]}")
            break  # once torch is loaded, later cases prove nothing
    assert not problems, "\n".join(problems)


def test_the_lists_checked_before_torch_are_the_library_s() -> None:
    from chestxray.cli import checks
    from chestxray.data.imaging import RESIZE_MODES
    from chestxray.inference.predict import TTA_MODES
    from chestxray.workflows.search_space import PRUNERS, SAMPLERS

    assert tuple(checks.TTA_MODES) == tuple(TTA_MODES) and tuple(checks.RESIZE_MODES) == tuple(RESIZE_MODES)
    assert tuple(checks.SAMPLERS) == tuple(SAMPLERS) and tuple(checks.PRUNERS) == tuple(PRUNERS)
