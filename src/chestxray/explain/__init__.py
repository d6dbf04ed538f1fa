"""Explain: where in the image a model looks.

`attribution` computes Grad-CAM and Integrated Gradients heatmaps and overlays for any model; `localize` scores a
heatmap against expert boxes (pointing game, IoU, energy in box); `explanations` runs them over files or a split
of a run and writes overlays and scores.csv for the report.
"""
