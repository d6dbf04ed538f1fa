"""Training callbacks: freezing the backbone (and what --unfreeze-last N thaws)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from chestxray.models import build_model
from chestxray.training.callbacks import FreezeBackbone
from chestxray.training.module import ChestXrayModule
from tests.training.helpers import batches, quiet_trainer

# ------------------------------------------------------------------ module wiring


@pytest.mark.parametrize("unfreeze_last", [0, 1])
def test_freeze_backbone_trains_only_head(unfreeze_last: int) -> None:
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 2, (8, 2)).astype(np.float32))
    module = ChestXrayModule(build_model("cnn-small", 2), ["a", "b"], lr=1e-2, scheduler="plateau")
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = quiet_trainer(max_steps=2, callbacks=[FreezeBackbone("cnn-small", unfreeze_last)], num_sanity_val_steps=0,
                       limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(batches(8, labels), batch_size=None))
    after = module.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = [k for k in before if k.startswith("features.0.") or k.startswith("features.1.")]
    assert frozen and not changed & set(frozen)  # weights and BatchNorm statistics untouched
    assert "head.4.weight" in changed and "head.1.weight" in changed
    last_block = {k for k in before if k.startswith("features.2.") and "num_batches" not in k}
    statistics = {k for k in last_block if "running_" in k}
    # thawed: conv and BatchNorm affine weights train, BatchNorm statistics stay as stored
    assert (last_block - statistics <= changed) if unfreeze_last else not (last_block & changed)
    assert statistics and not statistics & changed


class _Record(torch.nn.Module):
    """Forward hook target: keeps the last output of a module and whether it ran in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[tuple[bool, torch.Tensor]] = []

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.outputs.append((module.training, output.detach().clone()))


@pytest.mark.parametrize("unfreeze_last", [0, 1])
def test_frozen_backbone_computes_the_same_features_in_train_and_eval_mode(unfreeze_last: int) -> None:
    """Lightning puts the model in train mode each epoch and after validation; frozen BatchNorm must not follow."""
    labels = torch.from_numpy(np.random.default_rng(2).integers(0, 2, (8, 2)).astype(np.float32))
    data = batches(8, labels, batch=8)  # one fixed batch, every step
    module = ChestXrayModule(build_model("cnn-small", 2), ["a", "b"], lr=1e-2, scheduler="plateau")
    frozen_part = module.net.features[1]  # frozen in both cases (features.2 is thawed with unfreeze_last=1)
    record = _Record()
    frozen_part.register_forward_hook(record)
    trainer = quiet_trainer(max_epochs=3, callbacks=[FreezeBackbone("cnn-small", unfreeze_last)],
                            num_sanity_val_steps=0, limit_val_batches=1)  # validation between the epochs
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None), val_dataloaders=DataLoader(data, batch_size=None))
    trained = [out for training, out in record.outputs if training]
    assert len(trained) == 3  # one per training step: the module ran in train mode, its BatchNorm did not
    module.net.eval()
    with torch.no_grad():
        evaluated = module.net.features[:2](data[0]["image"])
    for out in trained:
        torch.testing.assert_close(out, evaluated, rtol=0, atol=0)


# ------------------------------------------------------------------ config


# ------------------------------------------------------------------ progress bar and checkpoint sharing


def test_progress_bar_counts_epochs_from_one_and_hides_sanity_metrics(tmp_path) -> None:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from chestxray.training.callbacks import EpochProgressBar

    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 2, (8, 2)).astype(np.float32))
    module = ChestXrayModule(build_model("cnn-tiny", 2), ["a", "b"], lr=1e-2, scheduler="plateau")
    from lightning.pytorch.callbacks import RichProgressBar

    bar = EpochProgressBar()
    seen, raw = [], []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen.append((bar._get_train_description(trainer.current_epoch).strip(), bar.get_metrics(trainer, pl_module)))
            raw.append(RichProgressBar.get_metrics(bar, trainer, pl_module))  # what Lightning's bar would show

    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=CSVLogger(tmp_path), callbacks=[bar, Probe()],
                        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=1,
                        log_every_n_steps=1)
    data = DataLoader(batches(8, labels), batch_size=None)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    descriptions = [d for d, _ in seen]
    assert descriptions[0] == "Epoch 1/2" and descriptions[-1] == "Epoch 2/2"
    assert all("v_num" not in m for _, m in seen) and "v_num" in raw[0]
    first_epoch = [m for d, m in seen if d == "Epoch 1/2"]
    assert all(not any(k.startswith("val_") for k in m) for m in first_epoch)  # the sanity check is not a result
    assert any(k.startswith("val_") for k in seen[-1][1])  # after a real validation its metrics show


def test_after_training_only_last_stays_or_a_hard_link_to_the_same_step(tmp_path) -> None:
    import os

    from chestxray.training.resume import keep_only_last

    last, best = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    torch.save({"global_step": 7, "w": torch.ones(3)}, best)
    torch.save({"global_step": 7, "w": torch.ones(3)}, last)
    assert keep_only_last(last, best) == "linked" and os.path.samefile(last, best)  # same step: one file, two names
    assert torch.load(last, weights_only=True)["global_step"] == 7 and keep_only_last(last, best) == "linked"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    best.unlink()
    torch.save({"global_step": 5, "w": torch.ones(3)}, best)  # best earlier than last: the bundle holds it
    assert keep_only_last(last, best) == "removed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert keep_only_last(last, best) == "kept" and keep_only_last(last, None) == "kept"
