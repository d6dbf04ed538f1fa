"""Inference: run a bundle on image files or on a prepared split, with the bundle's own preprocessing.

Images are decoded and resized exactly as `prepare` stored them, normalised as the card says, and optionally
averaged over test-time augmentations, by one scoring path (inference.scoring) for every caller and backend. The next stages get probabilities (N, labels) with image and patient ids.
"""
