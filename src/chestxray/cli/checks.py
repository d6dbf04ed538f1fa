"""Cheap checks of command-line arguments, run before torch, Lightning or MLflow load: paths that must exist, folders
of the right kind (a run, a model bundle, a catalog, a PREPARED folder) and values from fixed lists. A bad argument
is refused in well under a second, with one line naming it and what to do (bench/bench_startup.py times it).

The lists below repeat names heavy modules own (they cannot be imported here without torch or scikit-learn);
tests/cli/test_usage_checks.py keeps them equal."""

from __future__ import annotations

import sys
from pathlib import Path

from chestxray.data.labels import closest
from chestxray.errors import ConfigError, DataError, ModelError
from chestxray.inference.runtime import ENGINES
from chestxray.inference.tta import TTA_MODES, check_tta  # noqa: F401 (TTA_MODES: the usage test reads it here)
from chestxray.training.config import BUILTIN_MODELS

RESIZE_MODES = ("crop", "pad", "stretch")  # chestxray.data.imaging.RESIZE_MODES
SAMPLERS = ("tpe", "random")  # chestxray.workflows.search_space.SAMPLERS
PRUNERS = ("median", "hyperband", "none")  # chestxray.workflows.search_space.PRUNERS


def one_of(flag: str, value: str | None, valid: tuple[str, ...]) -> None:
    """A value from a fixed list (None: not given)."""
    if value is not None and value not in valid:
        raise ConfigError(f"{flag} {value!r} is not one of {list(valid)}{closest(value, list(valid))}")


def at_least(flag: str, value: float | None, low: float, high: float | None = None) -> None:
    """A number in [low, high] (None: not given)."""
    if value is not None and (value < low or (high is not None and value > high)):
        span = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise ConfigError(f"{flag} must be {span}, got {value:g}")


def tta(mode: str | None) -> None:
    """A test-time augmentation mode (None: not given)."""
    if mode is not None:
        check_tta(mode)


def engine(name: str | None) -> None:
    """What runs the network for inference (None: not given): chestxray.inference.runtime.ENGINES."""
    one_of("--engine", name, ENGINES)


def model_name(name: str | None, flag: str = "--model") -> None:
    """A built-in architecture or timm/<name> (None: not given). Once the model registry is loaded (a library user
    registered a model of their own), the registry itself judges later."""
    if name is None or name in BUILTIN_MODELS or name.startswith("timm/") or "chestxray.models" in sys.modules:
        return
    raise ModelError(f"unknown model {name!r}{closest(name, list(BUILTIN_MODELS))}; choose one of: "
                     f"{', '.join(sorted(BUILTIN_MODELS))}, or timm/<name> (given as {flag})")


def threshold_method(text: str) -> None:
    """youden, f1 or sensitivity:<target in (0, 1]> (the evaluation's own parser, which needs no numeric library)."""
    from chestxray.evaluation.methods import parse_method

    parse_method(text)


def _kind(path: Path) -> str:
    """What a path is: missing, catalog, prepared, run, bundle, onnx, file or folder."""
    if not path.exists():
        return "missing"
    if path.is_file():
        return "onnx" if path.suffix.lower() == ".onnx" else "file"
    if (path / "bundle" / "card.json").is_file():
        return "run"
    if (path / "card.json").is_file():
        return "bundle"
    if (path / "manifest.json").is_file():
        return "prepared"
    if (path / "catalog.csv").is_file():
        return "catalog"
    return "folder"


def _wrong_kind(path: Path, kind: str, wanted: str) -> str:
    """The sentence for a path of the wrong kind, with the step that turns it into what is wanted."""
    if kind == "catalog":
        return (f"{path} is a catalog, not {wanted}; prepare it ('chestxray prepare {path} --out PREPARED') and "
                "train on that")
    if kind == "prepared":
        return f"{path} is a PREPARED folder, not {wanted}; train on it first ('chestxray train {path} --out RUN')"
    return f"{path}: not {wanted}"


def run_folder(path: Path) -> None:
    """A run folder written by 'chestxray train' (it holds bundle/card.json)."""
    kind = _kind(path)
    if kind == "missing":
        raise DataError(f"{path}: no such run folder; pass the folder 'chestxray train' wrote (it holds bundle/)")
    if kind in ("catalog", "prepared"):
        raise DataError(_wrong_kind(path, kind, "a run folder"))
    if kind != "run":
        raise DataError(f"{path}: not a run folder (no bundle/ folder with card.json); pass the folder "
                        "'chestxray train' wrote")


def not_data_folder(path: Path, wanted: str) -> None:
    """Refuse a missing path, a catalog or a PREPARED folder where `wanted` is expected (the command judges the
    rest itself)."""
    kind = _kind(path)
    if kind == "missing":
        raise DataError(f"{path}: no such {wanted}")
    if kind in ("catalog", "prepared"):
        raise DataError(_wrong_kind(path, kind, f"a {wanted}"))


def model_source(path: Path, onnx: bool = False) -> None:
    """A model bundle folder, a run folder holding bundle/, or (when onnx) an exported .onnx file."""
    kind = _kind(path)
    what = "a model (a bundle folder, a run folder" + (" or an .onnx file)" if onnx else ")")
    if kind == "missing":
        raise ModelError(f"{path}: no such model; pass {what[2:]}")
    if kind in ("run", "bundle") or (onnx and kind == "onnx"):
        return
    if kind in ("catalog", "prepared"):
        raise ModelError(_wrong_kind(path, kind, what))
    raise ModelError(f"{path}: not a model bundle (no card.json) nor a run folder (no bundle/card.json)"
                     + (" nor an .onnx file" if onnx else ""))


def site_data(path: Path) -> None:
    """A site's images for 'calibrate': a catalog folder or a PREPARED folder."""
    if _kind(path) not in ("catalog", "prepared"):
        raise DataError(f"{path}: not a catalog (catalog.csv) nor a PREPARED folder (manifest.json); build the site's "
                        "catalog with 'chestxray catalog folder|csv ... --out SITE' and pass that")


def prepared_folder(prepared: str | Path) -> None:
    """A PREPARED folder (manifest.json), or a URL (checked when it is read)."""
    text = str(prepared)
    if "://" in text:
        return
    path, kind = Path(text), _kind(Path(text))
    if kind == "catalog":
        raise DataError(f"{path} is a catalog, not a PREPARED folder; prepare it first: 'chestxray prepare {path} "
                        f"--out {path.parent / (path.name + '-prepared')}', then use that")
    if kind != "prepared":
        what = "does not exist" if kind == "missing" else "has no manifest.json"
        raise DataError(f"PREPARED folder {path} {what}; create one with 'chestxray prepare CATALOG --out PREPARED' "
                        "and pass that folder")


def catalog_folder(catalog: Path, out: Path) -> None:
    """prepare's CATALOG (a folder with catalog.csv) and an --out that is not the catalog itself."""
    kind = _kind(catalog)
    if kind == "missing":
        raise DataError(f"{catalog}: no such catalog folder; create one with 'chestxray catalog …' first")
    if kind == "prepared":
        raise DataError(f"{catalog} is a PREPARED folder, not a catalog; it is ready to train on: 'chestxray train "
                        f"{catalog}'")
    if kind != "catalog":
        raise DataError(f"{catalog}: not a catalog folder (no catalog.csv); create one with 'chestxray catalog …'")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; pick a folder for the PREPARED data, e.g. --out "
                          f"{catalog.parent / (catalog.name + '-prepared')}")
    if out.resolve() == catalog.resolve():
        raise ConfigError(f"--out {out} would write into the catalog {catalog}; pick another folder, e.g. --out "
                          f"{catalog.parent / (catalog.name + '-prepared')}")


def mlflow_store(store: str | None) -> None:
    """ui's --store: a URI, or a path that exists; without it, runs/mlflow.db or ./mlruns must exist here."""
    if store is None:
        if not (Path("runs") / "mlflow.db").exists() and not Path("mlruns").exists():
            raise ConfigError("no MLflow store here (looked for runs/mlflow.db and ./mlruns); pass --store with the "
                              "store's URI, its .db file, an mlruns folder or a run folder")
        return
    if "://" not in store and not store.startswith("file:") and not Path(store).exists():
        raise ConfigError(f"{store}: no MLflow store there (no such file or folder); pass the store's URI, its .db "
                          "file, an mlruns folder or a run folder")


def prepared_fits_run(prepared: str | Path, run: Path) -> None:
    """evaluate --prepared: a local PREPARED folder must hold the run's labels and be made as its bundle card says
    (read from the two JSON files; a URL is checked when its manifest is fetched)."""
    import json

    from chestxray.inference.compat import check_prepared_fits

    if "://" in str(prepared):
        return
    card = json.loads((run / "bundle" / "card.json").read_text(encoding="utf-8"))
    manifest = json.loads((Path(prepared) / "manifest.json").read_text(encoding="utf-8"))
    if "labels" in card and "image_size" in card and "labels" in manifest and "image_size" in manifest:
        check_prepared_fits(card, manifest, prepared, run / "bundle")


def other_data(prepared: str | Path, run: Path) -> bool:
    """True when a local PREPARED folder is not the data the run was trained on (its fingerprint differs from the
    card's): evaluate treats it as external data and never re-chooses the run's thresholds on it."""
    import json

    if "://" in str(prepared):
        return False
    card = json.loads((run / "bundle" / "card.json").read_text(encoding="utf-8"))
    manifest = json.loads((Path(prepared) / "manifest.json").read_text(encoding="utf-8"))
    trained = card.get("data_fingerprint")
    return bool(trained) and trained != manifest.get("fingerprint")
