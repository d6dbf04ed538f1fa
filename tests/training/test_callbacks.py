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
    assert (last_block <= changed) if unfreeze_last else not (last_block & changed)


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


def test_last_checkpoint_shares_the_best_file_when_they_are_the_same_step(tmp_path) -> None:
    import os

    from chestxray.training.train import share_last_with_best

    last, best = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    torch.save({"global_step": 7, "w": torch.ones(3)}, best)
    torch.save({"global_step": 5, "w": torch.zeros(3)}, last)
    assert not share_last_with_best(last, best) and not os.path.samefile(last, best)  # different steps: both kept
    torch.save({"global_step": 7, "w": torch.ones(3)}, last)
    assert share_last_with_best(last, best) and os.path.samefile(last, best)
    assert torch.load(last, weights_only=True)["global_step"] == 7 and not share_last_with_best(last, best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
