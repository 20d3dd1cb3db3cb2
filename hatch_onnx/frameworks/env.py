"""The environment that lets transformers see one framework only: defined once, light at import.

transformers imports every framework installed unless told otherwise. The worker pool hands
:func:`framework_env` to its processes; an in-process export (the CLI's ``export``, the Python
API) sets what the user has not set with :func:`isolate`, before transformers is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Optional

# TensorFlow checkpoints (tf_model.h5, a Keras 2 format) need tf-keras rather than Keras 3.
FRAMEWORK_ENV: Mapping[str, Mapping[str, str]] = {
    "pt": {"USE_TF": "0", "USE_TORCH": "1", "USE_FLAX": "0"},
    "tf": {"USE_TORCH": "0", "USE_TF": "1", "USE_FLAX": "0", "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
}


def framework_env(framework: str, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with only ``framework`` visible to transformers."""
    env = dict(os.environ if base is None else base)
    env.update(FRAMEWORK_ENV[framework])
    return env


def isolate(framework: str, environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Set, where unset, what keeps transformers from importing the other framework in this process."""
    environ = os.environ if environ is None else environ
    for name, value in FRAMEWORK_ENV[framework].items():
        environ.setdefault(name, value)
