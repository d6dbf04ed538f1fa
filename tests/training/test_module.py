"""The LightningModule: focal loss, warm-up + cosine schedule, validation AUROC over labels with both classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from chestxray.models import build_model
from chestxray.training.module import ChestXrayModule, batch_accuracy, focal_loss, warmup_cosine
from tests.training.helpers import batches, quiet_trainer

# ------------------------------------------------------------------ module wiring


def test_focal_loss_reduces_to_bce_and_downweights_easy_examples() -> None:
    logits, targets = torch.tensor([[3.0, -2.0], [0.1, 0.2]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(focal_loss(logits, targets, gamma=0.0), bce)
    assert focal_loss(logits, targets, gamma=2.0) < bce


def test_warmup_then_cosine() -> None:
    factors = [warmup_cosine(s, warmup=4, total=20) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[12] == pytest.approx(0.5) and factors[20] == pytest.approx(0)


def test_val_auroc_skips_labels_without_both_classes() -> None:
    rng = np.random.default_rng(0)
    labels = torch.zeros(24, 3)
    labels[:, 1] = torch.from_numpy(rng.integers(0, 2, 24).astype(np.float32))
    labels[:, 2] = 1.0  # no negatives
    module = ChestXrayModule(build_model("cnn-tiny", 3), ["a", "b", "c"])
    out = quiet_trainer().validate(module, dataloaders=DataLoader(batches(24, labels), batch_size=None), verbose=False)
    module.eval()
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(module(b["image"])) for b in batches(24, labels)])
    expected = roc_auc_score(labels[:, 1].numpy(), probs[:, 1].numpy())
    assert out[0]["val_auroc"] == pytest.approx(expected, abs=1e-5)
    assert "val_auroc_b" in out[0] and "val_auroc_a" not in out[0]
    assert np.isfinite(out[0]["val_loss"])
    expected_acc = ((probs >= 0.5).float() == labels).float().mean().item()  # mean over images and the 3 labels
    assert out[0]["val_accuracy"] == pytest.approx(expected_acc, abs=1e-6)


class FixedLogits(torch.nn.Module):
    """A 'net' whose logits are the first pixels of each image (so a test can feed any logits it wants)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.unused = torch.nn.Linear(1, 1)  # an optimiser needs a parameter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, : self.n]


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_val_auroc_ranks_saturated_scores(task: str) -> None:
    """Logits above 20 (float32 sigmoid = 1.0 exactly) still rank: AUROC 1.0, not the 0.5 of tied probabilities."""
    positive = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0], dtype=torch.float32)
    logits = torch.where(positive == 1, 30.0, 20.0) + torch.arange(8) * 0.01
    if task == "multiclass":
        images = torch.stack([logits, torch.zeros(8)], 1)  # class 0 against class 1: softmax saturates too
        labels = torch.stack([positive, 1 - positive], 1)
    else:
        images, labels = logits[:, None], positive[:, None]
    assert torch.sigmoid(logits).eq(1.0).all()  # what the old metric saw: all tied
    batch = [{"image": images[:, :, None, None], "labels": labels, "image_id": [str(i) for i in range(8)],
              "patient_id": [str(i) for i in range(8)]}]
    module = ChestXrayModule(FixedLogits(labels.shape[1]), ["a", "b"][: labels.shape[1]], task=task)
    out = quiet_trainer().validate(module, dataloaders=DataLoader(batch, batch_size=None), verbose=False)
    assert out[0]["val_auroc"] == pytest.approx(1.0)


def test_batch_accuracy_binary_multilabel_and_multiclass() -> None:
    logits = torch.tensor([[2.0, -1.0], [-0.5, 0.3], [0.0, -3.0]])  # sigmoid >= 0.5 exactly when logit >= 0
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert batch_accuracy(logits, labels).item() == pytest.approx(4 / 6)  # mean over labels and images
    assert batch_accuracy(logits[:, :1], labels[:, :1]).item() == pytest.approx(1 / 3)  # binary at 0.5
    onehot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert batch_accuracy(logits, onehot, "multiclass").item() == pytest.approx(2 / 3)  # argmax vs class


# ------------------------------------------------------------------ multi-class task


def test_softmax_loss_is_cross_entropy_weighted_and_focal() -> None:
    from chestxray.training.module import softmax_loss

    logits = torch.tensor([[2.0, 0.1, -1.0], [0.2, 0.3, 0.1], [-1.0, 0.5, 3.0]])
    targets = torch.eye(3)[[0, 2, 2]]
    index = torch.tensor([0, 2, 2])
    assert torch.allclose(softmax_loss(logits, targets), torch.nn.functional.cross_entropy(logits, index))
    weight = torch.tensor([2.0, 1.0, 0.5])
    assert torch.allclose(softmax_loss(logits, targets, weight=weight),
                          torch.nn.functional.cross_entropy(logits, index, weight=weight))
    assert torch.allclose(softmax_loss(logits, targets, "focal", gamma=0.0), softmax_loss(logits, targets))
    assert softmax_loss(logits, targets, "focal", gamma=2.0) < softmax_loss(logits, targets)


def test_multiclass_validation_reports_macro_ovr_auroc_and_accuracy() -> None:
    y = torch.from_numpy(np.random.default_rng(0).integers(0, 3, 30))
    labels = torch.eye(3)[y]
    module = ChestXrayModule(build_model("cnn-tiny", 3), ["N", "B", "V"], task="multiclass")
    out = quiet_trainer().validate(module, dataloaders=DataLoader(batches(30, labels), batch_size=None), verbose=False)
    module.eval()
    with torch.no_grad():
        probs = torch.cat([module(b["image"]).softmax(1) for b in batches(30, labels)]).numpy()
    assert out[0]["val_auroc"] == pytest.approx(roc_auc_score(y.numpy(), probs, multi_class="ovr"), abs=1e-5)
    assert out[0]["val_accuracy"] == pytest.approx(float((probs.argmax(1) == y.numpy()).mean()), abs=1e-6)
    assert out[0]["val_loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(torch.log(torch.from_numpy(probs)), y)), abs=1e-4)
