"""Report: one self-contained HTML page per run (metrics table with intervals, plots, explanations, data and
settings), built from the files the earlier stages left in the run folder; templates live beside it."""
