"""Weight file names by framework, as transformers writes them (light: no registry import)."""

PT_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TF_WEIGHTS = ("tf_model.h5", "tf_model.h5.index.json")
