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
