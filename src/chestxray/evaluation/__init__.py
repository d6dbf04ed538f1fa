"""Evaluation: honest numbers for a run.

`metrics` are pure functions (AUROC/AUPRC with patient-bootstrap intervals, operating-point counts,
calibration); `thresholds` are chosen on validation and stored in the bundle card; `evaluate` predicts a split,
applies them and writes metrics.json, CSV exports and `plots` into RUN/eval for the report.
"""
