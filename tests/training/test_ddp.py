"""DDP on CPU: two torchrun processes (gloo) train on disjoint samples; val AUROC covers the whole split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from chestxray.data.shards import iter_split_samples

SCRIPT = '''
import json, sys
import lightning as L
from chestxray.training.config import resolve_config
from chestxray.training.train import train


class Record(L.Callback):
    """Write the train image ids and the val predictions this rank saw."""

    def __init__(self):
        self.train_ids, self.val = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train_ids += list(batch["image_id"])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val += [[i, p, y] for i, p, y in zip(batch["image_id"], outputs["log_odds"].tolist(),
                                                      outputs["labels"].tolist())]

    def on_fit_end(self, trainer, pl_module):
        with open(f"{sys.argv[2]}/rank{trainer.global_rank}.json", "w") as fh:
            json.dump({"world_size": trainer.world_size, "train": self.train_ids, "val": self.val}, fh)


config = resolve_config(prepared=sys.argv[1], model="cnn-tiny", epochs=1, batch_size=16, lr=3e-3, augment="none",
                        num_workers=0, accelerator="cpu", devices=2, strategy="ddp", mlflow=False, progress=False,
                        out=sys.argv[2] + "/run")
train(config, callbacks=[Record()])
'''


def test_two_process_ddp_splits_train_and_gathers_val(tmp_path: Path, synthetic_prepared: Path) -> None:
    (tmp_path / "ddp_train.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29533", str(tmp_path / "ddp_train.py"), str(synthetic_prepared), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    train_ids = {s["image_id"] for s in iter_split_samples(synthetic_prepared, "train")}
    seen = [set(r["train"]) for r in ranks]
    assert len(ranks[0]["train"]) == len(seen[0]) and len(ranks[1]["train"]) == len(seen[1])
    assert not seen[0] & seen[1]  # disjoint
    assert seen[0] | seen[1] == train_ids  # together: every training image once
    assert abs(len(seen[0]) - len(seen[1])) <= 16

    val_ids = [s["image_id"] for s in iter_split_samples(synthetic_prepared, "val")]
    rows = {image_id: (p, y) for r in ranks for image_id, p, y in r["val"]}
    assert sorted(rows) == sorted(val_ids)  # the metric saw the whole val split
    scores = np.array([rows[i][0] for i in val_ids])
    labels = np.array([rows[i][1] for i in val_ids])
    usable = [j for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)]
    expected = np.mean([roc_auc_score(labels[:, j], scores[:, j]) for j in usable])
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(history) == 1
    assert abs(history["val_auroc"].iloc[0] - expected) < 1e-5
    assert (tmp_path / "run" / "bundle" / "card.json").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
