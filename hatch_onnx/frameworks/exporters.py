"""Each framework's exporters, named without importing the framework (the plan and the checks read them)."""

from __future__ import annotations

# The exporters of each framework, the default first: PyTorch's are torch.onnx's two, named
# explicitly (--exporter), and onnxruntime-genai's model builder (``genai``: it builds from the
# checkpoint's PyTorch weights; hatch_onnx.genai_builder) and this project's fused decoder graph
# (``fused``: written from the loaded model's weights; hatch_onnx.fused); TensorFlow's is
# tf2onnx, whatever was asked for PyTorch.
TORCH_ONNX = ("torchscript", "dynamo")
EXPORTERS = {"pt": (*TORCH_ONNX, "genai", "fused"), "tf": ("tf2onnx",)}


def exporter_name(framework: str, requested: "str | None" = None, fused_writes: bool = False) -> str:
    """The exporter a job of ``framework`` uses when ``requested`` (a PyTorch exporter name, or None) is asked for.

    None is the default: ``fused`` for a PyTorch job it writes (``fused_writes``: the caller asks
    :func:`hatch_onnx.fused.writes`, which reads config.json), else TorchScript.
    """
    if framework == "pt" and requested is not None:
        return requested
    if framework == "pt" and fused_writes:
        return "fused"
    return EXPORTERS[framework][0]
