"""chestxray: chest X-ray classifiers from raw files to a deployable, explained model."""
__version__ = "0.1.0"
