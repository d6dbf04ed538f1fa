"""Training: a validated TrainConfig in, a run folder out.

`config` resolves defaults ← YAML ← flags and checks them before anything heavy; `module` is the LightningModule
(loss, optimiser, schedule, validation AUROC) around an already built net; `callbacks` hold training policy
(freezing, history, atomic checkpoints, RNG state); `train` assembles the Trainer and keeps the run folder
(config.yaml, run.json, checkpoints, history, MLflow) and writes the best model as a bundle for the next stages.
"""
