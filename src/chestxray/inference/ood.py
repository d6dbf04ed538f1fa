"""Is an input like the training images? A Mahalanobis "in distribution" score on the model's own features.

Features are read at every backbone stage (the registry's `blocks`: the last module of each stage, averaged over
space or tokens) and at the input of the final Linear layer (the penultimate features), averaged over the
test-time views when TTA is on. Per layer, a Gaussian is fitted to the training images' features — mean and a
Ledoit-Wolf shrunk covariance (Lee et al. 2018 also score several layers; one mean keeps it label-free) — and an
image's squared Mahalanobis distance is standardised by the validation images' (a z-score of the log distance).
Early stages see the picture (a photograph, a lateral view, an inverted image); the penultimate features see what
the classifier makes of it. The combined statistic is the largest per-layer z-score (continuous, so no ties),
read against the validation images' own, so that

    in_distribution = (1 + #{validation images whose combined statistic >= the input's}) / (n_validation + 1)

is again the share of validation images at least as unusual: for inputs like the training images it is about
uniform. An input is marked **unusual** when its score is at or below the false-alarm rate (FALSE_ALARM, 1 %: about
1 in 100 ordinary images is marked). The score cannot fall below 1 / (n_validation + 1): with fewer than 99
validation images the rate in force is that floor (unusual = more unusual than every validation image). The reference lives beside the
bundle, never in its weights: ood.safetensors (means, precision matrices) and ood.json (validation distances and
statistics, the rule, counts).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.errors import ModelError
from chestxray.files import atomic_path, write_json
from chestxray.inference.tta import TTA_VIEWS  # noqa: F401 - forwards per batch under each TTA mode (features averaged)

OOD_WEIGHTS = "ood.safetensors"
OOD_CARD = "ood.json"
OOD_FORMAT = "chestxray-ood/2"
FALSE_ALARM = 0.01
PENULTIMATE = "penultimate"
RULE = ("unusual when fewer than {rate:.0%} of validation images are at least as unusual: the largest, over the "
        "backbone stages and the penultimate features, of the log squared Mahalanobis distance to the training "
        "images (Ledoit-Wolf covariance) standardised by the validation images' own")


def is_unusual(scores: Any, rate: float) -> np.ndarray:
    """(N,) bool: in-distribution scores at or below `rate` (the reference's rate in force)."""
    return np.asarray(scores, float) <= rate + 1e-12


@dataclass
class LayerReference:
    """One layer's training Gaussian and its validation distances (sorted)."""

    name: str
    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D), inverse of the shrunk covariance
    val_distances: np.ndarray  # (M,) sorted ascending

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances (N,) of features (N, D)."""
        centred = np.asarray(features, np.float64) - self.mean
        return np.einsum("nd,de,ne->n", centred, self.precision, centred)

    def z_scores(self, features: np.ndarray) -> np.ndarray:
        """log distance standardised by the validation images' log distances (N,): how many of their standard
        deviations farther than usual."""
        logs = np.log(self.val_distances + 1e-12)
        return (np.log(self.distances(features) + 1e-12) - logs.mean()) / max(float(logs.std()), 1e-12)


@dataclass
class OodReference:
    """The per-layer references and the validation images' combined statistics the score is read against."""

    layers: list[LayerReference]
    val_statistics: np.ndarray  # (M,) sorted: each validation image's largest per-layer z-score
    false_alarm: float = FALSE_ALARM
    info: dict[str, Any] = field(default_factory=dict)

    def statistic(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """The largest per-layer z-score (N,) of features {layer: (N, D)}: the layer where the input is most
        unusual."""
        return np.max([layer.z_scores(features[layer.name]) for layer in self.layers], axis=0)

    def scores(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """In-distribution scores (N,) in (0, 1]: (1 + #{validation statistics >= the input's}) / (M + 1)."""
        t = self.statistic(features)
        m = self.val_statistics.size
        return (1.0 + m - np.searchsorted(self.val_statistics, t, side="left")) / (m + 1.0)

    @property
    def rate(self) -> float:
        """The false-alarm rate in force: the one asked for, or 1 / (M + 1) when M validation images are too few to
        reach it (then an input is unusual when it is more unusual than every validation image)."""
        return max(self.false_alarm, 1.0 / (self.val_statistics.size + 1.0))

    def unusual(self, scores: np.ndarray) -> np.ndarray:
        """(N,) bool: inputs scored at or below the false-alarm rate in force."""
        return is_unusual(scores, self.rate)


def fit_reference(train: dict[str, np.ndarray], val: dict[str, np.ndarray], false_alarm: float = FALSE_ALARM,
                  info: dict[str, Any] | None = None) -> OodReference:
    """Per layer, the Gaussian of training features {layer: (N, D)} (Ledoit-Wolf covariance), read against the
    validation features {layer: (M, D)}."""
    from sklearn.covariance import LedoitWolf

    layers, shrinkage = [], {}
    for name, feats in train.items():
        feats = np.asarray(feats, np.float64)
        if feats.shape[0] < 2 or len(val[name]) < 1:
            raise ModelError(f"an OOD reference needs training features of at least 2 images and validation "
                             f"features; got {feats.shape[0]} and {len(val[name])}")
        lw = LedoitWolf().fit(feats)
        layer = LayerReference(name, lw.location_, np.linalg.pinv(lw.covariance_, hermitian=True), np.zeros(0))
        layer.val_distances = np.sort(layer.distances(val[name]))
        layers.append(layer)
        shrinkage[name] = float(lw.shrinkage_)
    n_val = len(next(iter(val.values())))
    ref = OodReference(layers, np.zeros(0), false_alarm,
                        {"n_train": int(len(next(iter(train.values())))), "n_val": int(n_val),
                         "layers": {lay.name: int(lay.mean.size) for lay in layers}, "shrinkage": shrinkage,
                         **(info or {})})
    ref.val_statistics = np.sort(ref.statistic(val))
    return ref


def save_reference(ref: OodReference, bundle_dir: str | Path) -> Path:
    """Write ood.safetensors and ood.json beside the bundle's weights (each atomically); returns ood.json."""
    from safetensors.numpy import save_file

    folder = Path(bundle_dir)
    tensors = {}
    for layer in ref.layers:
        tensors[f"{layer.name}.mean"] = layer.mean.astype(np.float64)
        tensors[f"{layer.name}.precision"] = layer.precision.astype(np.float32)
    with atomic_path(folder / OOD_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    return write_json(folder / OOD_CARD, {
        "format": OOD_FORMAT, "false_alarm": ref.false_alarm, "rate_in_force": ref.rate,
        "rule": RULE.format(rate=ref.rate),
        "layer_names": [lay.name for lay in ref.layers],
        "val_distances": {lay.name: lay.val_distances.tolist() for lay in ref.layers},
        "val_statistics": ref.val_statistics.tolist(), **ref.info})


def load_reference(bundle_dir: str | Path) -> OodReference | None:
    """The OOD reference stored beside a bundle, or None when it has none (bundles evaluated before it existed)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(bundle_dir)
    if not (folder / OOD_CARD).is_file() or not (folder / OOD_WEIGHTS).is_file():
        return None
    try:
        meta = json.loads((folder / OOD_CARD).read_text(encoding="utf-8"))
        arrays = load_file(str(folder / OOD_WEIGHTS))
        if meta.get("format") != OOD_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {OOD_FORMAT!r}")
        layers = [LayerReference(n, arrays[f"{n}.mean"], arrays[f"{n}.precision"].astype(np.float64),
                                 np.asarray(meta["val_distances"][n], np.float64)) for n in meta["layer_names"]]
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{folder}: damaged or outdated OOD reference ({OOD_CARD}/{OOD_WEIGHTS}: {exc}); run "
                         "'chestxray evaluate RUN' again to refit it") from None
    known = ("format", "false_alarm", "rate_in_force", "rule", "layer_names", "val_distances", "val_statistics")
    return OodReference(layers, np.asarray(meta["val_statistics"], np.float64), float(meta["false_alarm"]),
                        {k: v for k, v in meta.items() if k not in known})


def _pooled(output: Any) -> Any:
    """A stage's output as one float32 tensor (B, D) per image: the mean over space (B, C, H, W) or tokens (B, N, C)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    x = output.float()
    if x.ndim == 4:  # a global average pool rather than mean((2, 3)): ONNX Runtime runs it in its blocked layout
        from torch.nn.functional import adaptive_avg_pool2d

        return adaptive_avg_pool2d(x, 1).flatten(1)
    return x.mean(1) if x.ndim == 3 else x.flatten(1)


def _to_numpy(features: Any) -> np.ndarray:
    return features.detach().cpu().numpy().astype(np.float64)


@contextlib.contextmanager
def feature_tap(net: Any, architecture: str, as_tensors: bool = False) -> Iterator[dict[str, list[Any]]]:
    """While open, every forward of `net` appends, per layer, its features (B, D) float64 to the yielded
    {layer: list}: each backbone stage's pooled output ('stage0', 'stage1', …) and the penultimate features (the
    input of the registry's head layer). Forward hooks only: the network's outputs are untouched. `as_tensors`:
    float32 torch tensors still in the graph (for an ONNX export of the features) instead of arrays."""
    from chestxray.models.registry import backbone_blocks, head_module

    convert = (lambda x: x) if as_tensors else _to_numpy
    stages = [blocks[-1] for blocks in backbone_blocks(net, architecture) if blocks]
    store: dict[str, list[Any]] = {f"stage{i}": [] for i in range(len(stages))}
    store[PENULTIMATE] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, key=f"stage{i}": store[key].append(convert(_pooled(out))))
               for i, m in enumerate(stages)]
    handles.append(head_module(net, architecture).register_forward_pre_hook(
        lambda mod, inp: store[PENULTIMATE].append(convert(inp[0].flatten(1).float()))))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def mean_over_views(store: dict[str, list[np.ndarray]], views: int) -> dict[str, np.ndarray]:
    """Features {layer: (N, D)} from a tap when every batch ran `views` forwards in a row (TTA): their mean."""
    out = {}
    for name, arrays in store.items():
        if len(arrays) % views:
            raise ValueError(f"{len(arrays)} forwards recorded at {name}, not a multiple of {views} views")
        out[name] = (np.concatenate([np.mean(arrays[i:i + views], axis=0) for i in range(0, len(arrays), views)])
                     if arrays else np.zeros((0, 0)))
    return out


@dataclass
class OodProbe:
    """A backend's feature tap and a bundle's OOD reference: tap() records features while the Scorer runs its usual
    forwards (a PyTorch network's hooks, or an ONNX graph's feature outputs), scores() turns them into
    in-distribution scores."""

    tap: Callable[[], contextlib.AbstractContextManager[dict[str, list[np.ndarray]]]]
    reference: OodReference

    def scores(self, store: dict[str, list[np.ndarray]], tta: str) -> np.ndarray:
        return self.reference.scores(mean_over_views(store, TTA_VIEWS[tta]))
