from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "fixtures" / "checkpoints"

# transformers imports TensorFlow when it is installed unless told not to; PyTorch tests don't need it.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def checkpoint(model_type: str) -> Path:
    return CHECKPOINTS / f"{model_type}-tiny"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder: no test sees another's exports."""
    monkeypatch.setenv("HATCH_ONNX_CACHE", str(tmp_path / "cache"))
