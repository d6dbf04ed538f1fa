"""The LightningModule: loss (BCE or focal, optional positive weights; softmax cross-entropy for a multiclass task),
AdamW with warm-up + cosine or plateau, and validation AUROC over the labels that have both classes (one-vs-rest per
class for multiclass, plus accuracy), ranked on log-odds. It receives a built net; it never builds data.

Missing labels (a merged dataset whose source does not annotate a finding: NaN in the batch's labels) are masked: an
(image, finding) pair that is missing adds nothing to the loss or its gradient, and the loss is the mean over the
annotated pairs (the plain mean when nothing is missing); validation AUROC and accuracy skip them likewise."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.utilities import dim_zero_cat

from chestxray.data.tasks import is_multiclass, log_odds
from chestxray.training.execution import compile_for_training, mark_batch_dynamic

log = logging.getLogger(__name__)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
               pos_weight: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Mean sigmoid focal loss: BCE (optionally pos-weighted) scaled by (1 - p_t)^gamma (Lin et al. 2017)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    probs = torch.sigmoid(logits)
    p_t = probs * targets + (1 - probs) * (1 - targets)
    loss = bce * (1 - p_t).pow(gamma)
    return loss.mean() if reduction == "mean" else loss


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str = "bce", gamma: float = 2.0,
                pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE or focal loss over the annotated (image, label) pairs only: labels (B, L) 0/1 with NaN where missing.

    A missing pair's term is replaced by a constant zero (torch.where, so neither it nor its gradient reaches the
    logits), and the sum is divided by the number of annotated pairs (0 when there are none)."""
    given = ~torch.isnan(labels)
    targets = torch.where(given, labels, torch.zeros_like(labels))
    if loss == "focal":
        terms = focal_loss(logits, targets, gamma, pos_weight, reduction="none")
    else:
        terms = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    terms = torch.where(given, terms, torch.zeros_like(terms))
    return terms.sum() / given.sum().clamp(min=1)


def softmax_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str = "bce", gamma: float = 2.0,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-class loss on one-hot targets (B, K): cross-entropy (optionally class-weighted), or its focal form
    (each image's cross-entropy scaled by (1 - p_target)^gamma) when loss == 'focal'."""
    index = targets.argmax(1)
    ce = F.cross_entropy(logits, index, weight=weight, reduction="none")
    if loss == "focal":
        p_t = logits.softmax(1).gather(1, index[:, None])[:, 0]
        ce = ce * (1 - p_t).pow(gamma)
    if weight is not None:  # weighted mean, as F.cross_entropy's own reduction
        return ce.sum() / weight[index].sum()
    return ce.mean()


def batch_accuracy(logits: torch.Tensor, labels: torch.Tensor, task: str = "multilabel") -> torch.Tensor:
    """Accuracy of one batch: argmax vs one-hot class for multiclass; else sigmoid >= 0.5 vs each 0/1 label,
    averaged over labels and images (for one label: plain binary accuracy at 0.5)."""
    if is_multiclass(task):
        return (logits.argmax(1) == labels.argmax(1)).float().mean()
    given = ~torch.isnan(labels)
    right = ((logits >= 0).float() == labels) & given  # sigmoid(x) >= 0.5 <=> x >= 0; missing labels left out
    return right.float().sum() / given.sum().clamp(min=1)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class ScoreBank(Metric):
    """Every validation image's log-odds (N, L) and labels (N, L; NaN where missing), gathered from all ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        self.scores.append(scores.reshape(len(scores), -1).float())
        self.labels.append(labels.reshape(len(labels), -1).float())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.scores, list) and not self.scores:  # after a DDP sync the states are tensors
            return torch.zeros(0, 0), torch.zeros(0, 0)
        return dim_zero_cat(self.scores), dim_zero_cat(self.labels)


def label_aurocs(scores: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[bool]]:
    """AUROC per label of scores (N, L) against 0/1 labels (N, L) over the images that annotate it (NaN: missing),
    and whether it is defined (both classes among them).

    Ranked by scikit-learn on the scores as given (float64): torchmetrics' AUROC turns scores outside [0, 1] into
    float32 sigmoids, which tie at exactly 1.0 above a logit of ~17 and give AUROC 0.5.
    """
    s, y = scores.detach().double().cpu().numpy(), labels.detach().double().cpu().numpy()
    out, usable = [], []
    for j in range(y.shape[1] if y.ndim == 2 else 0):
        given = ~np.isnan(y[:, j])
        t = y[given, j]
        ok = bool((t == 1).any() and (t == 0).any())
        out.append(float(roc_auc_score(t, s[given, j])) if ok else math.nan)
        usable.append(ok)
    return out, usable


class ChestXrayModule(L.LightningModule):
    """Classifier around a built net: BCE-with-logits (or focal) loss, AdamW, val mean AUROC; task 'multiclass':
    softmax cross-entropy (pos_weight = class weights), val macro one-vs-rest AUROC and val_accuracy.

    total_steps sets the cosine schedule's length (train() computes it from the data plan, so the train loader is
    never built before a resumed run has restored its epoch); warmup_steps (None: warmup_fraction × total_steps) is
    given by train() when it extends a run, which keeps the warm-up the run started with. val_auroc is the mean over labels that have both
    classes in the validation set (others are left out, so a label without positives never gives NaN), ranked on
    the log-odds (chestxray.data.tasks.log_odds) that ScoreBank gathers from every rank.
    """

    def __init__(self, net: nn.Module, labels: list[str], lr: float = 1e-4, weight_decay: float = 1e-4,
                 loss: str = "bce", focal_gamma: float = 2.0, pos_weight: list[float] | None = None,
                 scheduler: str = "cosine", warmup_fraction: float = 0.05, monitor: str = "val_auroc",
                 patience: int = 5, channels_last: bool = False, total_steps: int = 1000,
                 task: str = "multilabel", backbone_lr_scale: float = 1.0,
                 backbone_params: Collection[str] = (), warmup_steps: int | None = None,
                 missing_labels: bool = False, compile_net: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "backbone_params"], logger=False)  # loggers get the TrainConfig
        self.net = net
        self.backbone_params = frozenset(backbone_params)
        self.labels = list(labels)
        self.register_buffer("pos_weight", torch.tensor(pos_weight, dtype=torch.float32) if pos_weight else None)
        n = len(self.labels)
        self.multiclass = is_multiclass(task)
        if self.multiclass:
            self.val_accuracy = MulticlassAccuracy(num_classes=n, average="micro")
        # log-odds and labels (a missing label, NaN, is left out of its AUROC): AUROC ranks on log-odds, never on
        # saturated sigmoids
        self.val_scores = ScoreBank()
        self.val_loss = MeanMetric()
        self.val_label_accuracy = MeanMetric()  # multilabel/binary: mean over labels at 0.5

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) float → logits (B, L); training batches of 2+ images through the compiled net when
        compile_net is set (validation and single images eagerly: chestxray.training.execution)."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.hparams.compile_net and self.training and len(images) > 1:
            return self.compiled_net()(mark_batch_dynamic(images))
        return self.net(images)

    def compiled_net(self) -> Any:
        """self.net compiled for training, built on first use and kept outside the module's submodules, so the state
        dict (checkpoints, bundle) holds only net.* keys and never the compiled wrapper's `_orig_mod.` copy."""
        compiled = self.__dict__.get("_compiled_net")
        if compiled is None:
            log.info("compiling the training step (torch.compile, inductor): a one-time cost of tens of CPU seconds")
            compiled = compile_for_training(self.net)
            object.__setattr__(self, "_compiled_net", compiled)  # not nn.Module.__setattr__: no submodule
        return compiled

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.multiclass:
            return softmax_loss(logits, labels, self.hparams.loss, self.hparams.focal_gamma, self.pos_weight)
        if self.hparams.missing_labels:
            return masked_loss(logits, labels, self.hparams.loss, self.hparams.focal_gamma, self.pos_weight)
        if self.hparams.loss == "focal":
            return focal_loss(logits, labels, self.hparams.focal_gamma, self.pos_weight)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=self.pos_weight)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["image"])
        loss = self.compute_loss(logits, batch["labels"])
        accuracy = batch_accuracy(logits.detach().float(), batch["labels"], self.hparams.task)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["labels"]))
        self.log("train_accuracy", accuracy, on_step=False, on_epoch=True, batch_size=len(batch["labels"]))
        return {"loss": loss, "accuracy": accuracy}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        logits = self(batch["image"]).float()
        scores = torch.from_numpy(log_odds(logits.detach().cpu().numpy(), self.hparams.task)).to(logits.device)
        self.val_loss.update(self.compute_loss(logits, labels), weight=len(labels))
        self.val_scores.update(scores, labels)
        if self.multiclass:
            self.val_accuracy.update(logits, labels.argmax(1))  # argmax of the logits
        else:
            self.val_label_accuracy.update(batch_accuracy(logits, labels, self.hparams.task), weight=len(labels))
        return {"log_odds": scores.detach(), "labels": labels}

    def on_validation_epoch_end(self) -> None:
        per_label, usable = label_aurocs(*self.val_scores.compute())
        if any(usable):
            auroc = torch.tensor(float(np.mean([a for a, ok in zip(per_label, usable) if ok])))
        else:
            if not (self._trainer is not None and self.trainer.sanity_checking):  # sanity check: a batch or two
                log.warning("no label has both positives and negatives in the validation data; val_auroc set to 0.5")
            auroc = torch.tensor(0.5)
        self.log("val_auroc", auroc, prog_bar=True)
        self.log("val_loss", self.val_loss.compute())
        if self.multiclass:
            self.log("val_accuracy", self.val_accuracy.compute(), prog_bar=True)
            self.val_accuracy.reset()
        else:
            self.log("val_accuracy", self.val_label_accuracy.compute())
            self.val_label_accuracy.reset()
        for name, value, ok in zip(self.labels, per_label, usable, strict=False):
            if ok:
                self.log(f"val_auroc_{name}", value)
        for metric in (self.val_scores, self.val_loss):
            metric.reset()

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters: the backbone's at lr × backbone_lr_scale, the rest (head) at lr; empty groups left out."""
        lr, scale = self.hparams.lr, self.hparams.backbone_lr_scale
        trainable = [(k, p) for k, p in self.net.named_parameters() if p.requires_grad]
        backbone = [p for k, p in trainable if k in self.backbone_params]
        head = [p for k, p in trainable if k not in self.backbone_params]
        groups = [{"params": backbone, "lr": lr * scale, "name": "backbone"}, {"params": head, "lr": lr, "name": "head"}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.param_groups(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.scheduler == "plateau":
            mode = "max" if self.hparams.monitor == "val_auroc" else "min"
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5,
                                                                 patience=max(1, self.hparams.patience // 2))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": self.hparams.monitor,
                                                             "interval": "epoch", "strict": False}}
        total = max(1, int(self.hparams.total_steps))
        warmup = self.warmup_steps()
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def warmup_steps(self) -> int:
        """Warm-up length of the cosine schedule: the given warmup_steps, else warmup_fraction × total_steps."""
        if self.hparams.warmup_steps is not None:
            return int(self.hparams.warmup_steps)
        return int(self.hparams.warmup_fraction * max(1, int(self.hparams.total_steps)))

    def on_train_start(self) -> None:
        """Set each step-wise schedule's LR for the step it stands at. A fresh run changes nothing; a resumed run's
        optimizer comes back with the LR it last used, which for an extended run (a longer schedule) is not the new
        schedule's value at that step (at the end of a cosine it is 0, so the first resumed step would not learn)."""
        for config in self.trainer.lr_scheduler_configs:
            schedule = config.scheduler
            if isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
                lrs = [base * factor(schedule.last_epoch) for base, factor in
                       zip(schedule.base_lrs, schedule.lr_lambdas, strict=True)]
                for group, lr in zip(schedule.optimizer.param_groups, lrs, strict=True):
                    group["lr"] = lr
                schedule._last_lr = lrs
