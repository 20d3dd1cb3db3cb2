"""The Hatch build hook ``onnx``: ``hatch build`` ships params.yaml's validated models in the wheel.

``hooks.py`` registers the hook with hatchling, ``plugin.py`` is the hook (its options and the
steps of a build), ``folder.py`` the folder of models it owns in the project, and
``interpreter.py`` finds the Python that runs exports when the build environment has no ML
framework. Nothing here imports hatch-onnx's export machinery at import time: hatchling loads
every registered plugin for every build.
"""
