"""Demo models: ``from demo_models.onnx import load; path, session = load("bert-tiny", "default")``."""
