"""Deployment: the model leaves the toolkit as an ONNX file, an MLflow model or a web page and JSON API (serve)."""
