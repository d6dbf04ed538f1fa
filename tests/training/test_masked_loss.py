"""Missing labels in training: zero loss and zero gradient for a finding a source does not annotate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from chestxray.training.module import ChestXrayModule, MaskedAUROC, batch_accuracy, focal_loss, masked_loss

NAN = float("nan")


@pytest.mark.parametrize("loss", ["bce", "focal"])
@pytest.mark.parametrize("weighted", [False, True])
def test_missing_label_contributes_zero_gradient(loss: str, weighted: bool) -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([[1, 0, NAN], [0, NAN, NAN], [1, 1, 0], [NAN, 0, 1], [0, 0, NAN], [1, NAN, 0]])
    pos_weight = torch.tensor([2.0, 0.5, 3.0]) if weighted else None
    value = masked_loss(logits, labels, loss, 2.0, pos_weight)
    value.backward()
    missing = torch.isnan(labels)
    assert torch.equal(logits.grad[missing], torch.zeros(int(missing.sum())))  # exactly zero, not just small
    assert (logits.grad[~missing].abs() > 0).all()
    # the same number as the plain loss over the annotated pairs only
    given = ~missing
    targets = torch.nan_to_num(labels)
    if loss == "focal":
        terms = focal_loss(logits.detach(), targets, 2.0, pos_weight, reduction="none")
    else:
        terms = F.binary_cross_entropy_with_logits(logits.detach(), targets, pos_weight=pos_weight, reduction="none")
    assert math.isclose(float(value.detach()), float(terms[given].mean()), rel_tol=1e-6)


def test_changing_a_missing_label_changes_nothing() -> None:
    logits = torch.randn(4, 2)
    a = torch.tensor([[1, NAN], [0, 1], [NAN, 0], [1, 1.0]])
    b = a.clone()
    b[0, 1], b[2, 0] = NAN, NAN
    assert float(masked_loss(logits, a)) == float(masked_loss(logits, b))
    with_zero = a.clone()
    with_zero[torch.isnan(with_zero)] = 0  # the torchxrayvision pitfall: missing read as negative
    assert float(masked_loss(logits, with_zero)) != float(masked_loss(logits, a))


def test_no_missing_equals_plain_mean_and_module_uses_mask() -> None:
    logits = torch.randn(5, 2)
    labels = torch.randint(0, 2, (5, 2)).float()
    assert torch.allclose(masked_loss(logits, labels), F.binary_cross_entropy_with_logits(logits, labels))
    module = ChestXrayModule(torch.nn.Linear(4, 2), ["a", "b"], missing_labels=True)
    labels[0, 1] = NAN
    assert torch.isfinite(module.compute_loss(logits, labels))
    plain = ChestXrayModule(torch.nn.Linear(4, 2), ["a", "b"])
    assert torch.isnan(plain.compute_loss(logits, labels))  # a loss that forgets the mask fails loudly


def test_accuracy_and_validation_auroc_skip_missing() -> None:
    logits = torch.tensor([[2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]])
    labels = torch.tensor([[1, 0], [0, NAN], [NAN, 1.0]])
    assert float(batch_accuracy(logits, labels)) == 1.0  # 4 annotated pairs, all right
    metric = MaskedAUROC(2)
    probs = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.8, 0.1], [0.2, 0.3]])
    targets = torch.tensor([[1, 0], [0, -1], [1, 1], [0, -1]])
    metric.update(probs, targets)
    out = metric.compute()
    assert float(out[0]) == 1.0
    assert float(out[1]) == 0.0  # only the two annotated images: the positive scores below the negative
    single = MaskedAUROC(1)
    single.update(probs[:, :1], torch.tensor([[1], [-1], [-1], [1]]))
    assert math.isnan(float(single.compute()))  # one class only among the annotated: undefined, not 0.5
