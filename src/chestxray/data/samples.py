"""Where the bundled real samples live ($CHESTXRAY_DATA, else ../shared/data beside the project checkout), and
real images that are NOT chest X-rays, shipped with installed packages, for checking out-of-distribution scores."""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

KAGGLE = "kaggle-chest-xray-pneumonia"
NIH = "nih-chestxray14"
ENV_VAR = "CHESTXRAY_DATA"


def find_sample_data(start: str | Path | None = None) -> Path | None:
    """The shared data folder holding the sample collections, or None when it cannot be found."""
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR]).expanduser()
        return path if path.is_dir() else None
    here = Path(start or Path.cwd()).resolve()
    package_root = Path(__file__).resolve().parents[3]
    for base in (here, *here.parents, package_root):
        candidate = base.parent / "shared" / "data"
        if (candidate / KAGGLE).is_dir() or (candidate / NIH).is_dir():
            return candidate
    return None


def non_cxr_images(out_dir: str | Path) -> list[Path]:
    """Photographs and drawings shipped with matplotlib (and scikit-image's sample images when it is installed), plus
    matplotlib's MRI slice (raw 16-bit) written as out_dir/mri-slice.png: inputs a chest X-ray model should refuse."""
    import matplotlib
    import numpy as np
    from PIL import Image

    mpl = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    raw = np.frombuffer(gzip.open(mpl / "s1045.ima.gz").read(), "<u2").reshape(256, 256)
    slice_png = Path(out_dir) / "mri-slice.png"
    Image.fromarray((raw / raw.max() * 255).astype(np.uint8)).save(slice_png)
    found = [mpl / "grace_hopper.jpg", mpl / "Minduka_Present_Blue_Pack.png", slice_png]
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.origin:
        data = Path(spec.origin).parent / "data"
        found += sorted(p for p in data.iterdir() if p.suffix in (".png", ".jpg"))
    return found
