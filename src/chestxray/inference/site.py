"""Site profiles: a new hospital's recalibration, thresholds and conformal bound, kept beside the bundle as JSON.

A site profile never changes the bundle (DESIGN.md: external data never changes a bundle unless the user asks). It
lives in RUN/sites/NAME/site.json (written by `chestxray calibrate`) and is picked by name with `--site NAME` in
predict, serve and export. It holds a chain of monotone maps applied to the bundle's probabilities, in order:

- ``temperature``  p' = sigmoid(logit(p) / t)             per label (1 parameter)
- ``platt``        p' = sigmoid(a * logit(p) + b)          per label (2 parameters)
- ``isotonic``     p' = interp(p, x, y)                    per label (a step-free increasing curve)
- ``prior``        Saerens et al. 2002 prior shift: p' ∝ p * target / source against (1 - p) * (1 - target) /
                   (1 - source)                            per label
- ``softmax_temperature`` and ``softmax_prior``: the same for a multi-class bundle, over the classes jointly.

plus the site's thresholds and, when fitted, the conformal threshold. Numpy only: the ONNX scorer uses it without
torch.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.errors import ConfigError, ModelError
from chestxray.files import write_json

SITE_FORMAT = "chestxray-site/1"
SITE_FILE = "site.json"
SITES_DIR = "sites"
SITE_KEY = "chestxray_site"  # ONNX metadata entry of a profile exported with the model (export --site)
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before a logit
PER_LABEL = ("none", "temperature", "platt", "isotonic", "prior")  # "none": no map (kept to say so)
JOINT = ("softmax_temperature", "softmax_prior")
IDENTITY_FIELDS = ("architecture", "labels", "created", "data_fingerprint")  # what ties a profile to its bundle


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [EPS, 1 - EPS]."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def apply_step(step: dict[str, Any], probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """One map of a site profile applied to probabilities (N, L); labels without parameters pass through."""
    kind = step.get("kind")
    out = np.array(probs, dtype=np.float64, copy=True)
    if kind in JOINT:
        logp = np.log(np.clip(out, EPS, 1.0))
        if kind == "softmax_temperature":
            logp = logp / float(step["t"])
        else:
            logp = logp + np.log(np.asarray(step["target"], float)) - np.log(np.asarray(step["source"], float))
        logp -= logp.max(1, keepdims=True)
        e = np.exp(logp)
        return e / e.sum(1, keepdims=True)
    if kind not in PER_LABEL:
        raise ModelError(f"unknown calibration map {kind!r} in a site profile; expected one of {PER_LABEL + JOINT}")
    for j, name in enumerate(labels):
        par = step.get("params", {}).get(name)
        if par is None:
            continue
        p = out[:, j]
        if kind == "temperature":
            out[:, j] = sigmoid(logit(p) / float(par["t"]))
        elif kind == "platt":
            out[:, j] = sigmoid(float(par["a"]) * logit(p) + float(par["b"]))
        elif kind == "isotonic":
            out[:, j] = np.interp(p, np.asarray(par["x"], float), np.asarray(par["y"], float))
        else:
            out[:, j] = sigmoid(logit(p) + logit(par["target"]) - logit(par["source"]))
    return out


def apply_steps(steps: Sequence[dict[str, Any]], probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """A chain of maps applied in order; NaN rows (quarantined files) stay NaN."""
    out = np.asarray(probs, dtype=np.float64)
    bad = np.isnan(out).any(1) if out.ndim == 2 else np.zeros(0, bool)
    filled = np.where(np.isnan(out), 0.5, out)
    for step in steps:
        filled = apply_step(step, filled, labels)
    filled[bad] = np.nan
    return filled


@dataclass
class SiteProfile:
    """What `chestxray calibrate` learnt about one site: maps, thresholds, conformal bound, provenance."""

    name: str
    labels: list[str]
    task: str
    mode: str  # "labelled" (maps and thresholds fitted on site labels) | "unlabelled" (prevalence by EM)
    steps: list[dict[str, Any]]
    thresholds: dict[str, float] | None
    threshold_method: str
    bundle: dict[str, Any]  # IDENTITY_FIELDS of the bundle card it was fitted for
    tta: str = "none"
    calibration: dict[str, Any] = field(default_factory=dict)  # chosen method, rule, CV log-loss per candidate
    conformal: dict[str, Any] | None = None
    prevalence: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format: str = SITE_FORMAT

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """The bundle's probabilities (N, L) as this site's calibrated probabilities."""
        return apply_steps(self.steps, probs, self.labels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bundle_identity(card: dict[str, Any]) -> dict[str, Any]:
    """The card fields that identify a bundle (its weights were saved with them)."""
    return {k: card.get(k) for k in IDENTITY_FIELDS}


def save_site(profile: SiteProfile, out_dir: str | Path) -> Path:
    """Write site.json into out_dir (atomically); returns its path."""
    if not profile.created:
        profile.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return write_json(Path(out_dir) / SITE_FILE, profile.to_dict())


def read_site(path: str | Path) -> SiteProfile:
    """A site profile from a site folder or its site.json (plain JSON: nothing is unpickled)."""
    file = Path(path)
    file = file / SITE_FILE if file.is_dir() else file
    if not file.is_file():
        raise ConfigError(f"{file}: no site profile; make one with 'chestxray calibrate RUN --data SITE --out "
                          f"RUN/sites/NAME'")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not valid JSON ({exc}); run 'chestxray calibrate' again") from None
    return site_from_json(text, f"{file} (run 'chestxray calibrate' again)")


def site_from_json(text: str, where: str) -> SiteProfile:
    """A site profile from its JSON text (e.g. ONNX metadata)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: the site profile is not valid JSON ({exc}); export it again") from None
    if not isinstance(data, dict) or data.get("format") != SITE_FORMAT:
        raise ConfigError(f"{where}: not a chestxray site profile (format {SITE_FORMAT!r} expected); export it again")
    known = set(SiteProfile.__dataclass_fields__)
    return SiteProfile(**{k: v for k, v in data.items() if k in known})


def site_folder(model: str | Path, site: str) -> Path:
    """Where the profile named `site` lives for a model: RUN/sites/NAME for a run or its bundle, sites/NAME beside
    an .onnx file, or `site` itself when it is a path (holds a '/' or ends in .json)."""
    if "/" in site or os.sep in site or site.endswith(".json"):
        return Path(site)
    base = Path(model)
    if base.suffix.lower() == ".onnx":
        return base.parent / SITES_DIR / site
    if (base / "bundle").is_dir():  # a run folder
        return base / SITES_DIR / site
    return base.parent / SITES_DIR / site  # a bundle folder: RUN/bundle -> RUN/sites


def list_sites(model: str | Path) -> list[str]:
    """Names of the site profiles stored beside a model."""
    folder = site_folder(model, "x").parent
    return sorted(p.parent.name for p in folder.glob(f"*/{SITE_FILE}")) if folder.is_dir() else []


def check_site(profile: SiteProfile, card: dict[str, Any], where: str) -> None:
    """Refuse a profile fitted for another bundle (other labels, architecture or training)."""
    mine = bundle_identity(card)
    differ = [k for k in IDENTITY_FIELDS if profile.bundle.get(k) != mine.get(k)]
    if differ:
        raise ConfigError(f"{where}: site profile {profile.name!r} was fitted for another model (differs in "
                          f"{', '.join(differ)}); run 'chestxray calibrate' for this model")


def load_site(model: str | Path, site: str, card: dict[str, Any]) -> SiteProfile:
    """The profile named `site` for the model at `model`, checked against its card."""
    folder = site_folder(model, site)
    if not (folder / SITE_FILE).is_file() and not folder.is_file():
        names = list_sites(model)
        have = f"stored site profiles: {', '.join(names)}" if names else "no site profile is stored for it"
        raise ConfigError(f"{folder}: no site profile {site!r} for {model} ({have}); make one with "
                          f"'chestxray calibrate RUN --data SITE --out {folder}'")
    profile = read_site(folder)
    check_site(profile, card, str(folder))
    return profile


def site_scorer(scorer: Any, profile: SiteProfile) -> Any:
    """A Scorer giving the site's probabilities and thresholds: the bundle's scores (same TTA as the profile was
    fitted on, else ConfigError) passed through the profile's maps."""
    if scorer.tta != profile.tta:
        raise ConfigError(f"site profile {profile.name!r} was fitted on scores made with --tta {profile.tta}; score "
                          f"with --tta {profile.tta} (or leave --tta out), or run 'chestxray calibrate' again")
    check_site(profile, scorer.card, scorer.source)
    return replace(scorer, card=site_card(scorer.card, profile), calibrate=profile.apply)


def site_card(card: dict[str, Any], profile: SiteProfile) -> dict[str, Any]:
    """A copy of the bundle card as the site sees it: the site's thresholds, method and name (the bundle's log-odds
    thresholds are dropped: decisions then use the log-odds of the site's probability thresholds)."""
    out = dict(card)
    out.update(thresholds=profile.thresholds, threshold_method=profile.threshold_method, threshold_tta=profile.tta,
               site=profile.name, site_mode=profile.mode, threshold_logits=None)
    return out
