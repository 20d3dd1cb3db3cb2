"""params.yaml's schema (pydantic), with errors that name the key at fault.

```yaml
onnx:
  opset: 17                # default for every model; an architecture's minimum wins when higher
  atol: 1.0e-4             # optional; default: each architecture's own tolerance
  cache: .hatch-onnx-cache # relative to params.yaml, or absolute; env HATCH_ONNX_CACHE overrides
  remote: s3://bucket/onnx # optional: a shared cache tier (fsspec URL); env HATCH_ONNX_REMOTE overrides
  signing_key: keys/ci.pem # optional (see hatch_onnx.signing): sign uploads and manifests
  trusted_keys: [keys/ci.pub.pem]  # optional: accept only remote entries these keys signed
  executor: local          # or ray: each checkpoint's misses as a Ray task (hatch_onnx.ray_executor)
  models:
    bert-tiny:
      checkpoint: fixtures/checkpoints/bert-tiny
      features: [default, sequence-classification]
      framework: auto      # auto | pt | tf
      atol: 1.0e-4         # optional per-model override
      opset: 18            # optional per-model override
      exporter: torchscript  # default: fused for Llama/Mistral/Qwen2/Qwen3 causal-lm-with-past, else torchscript
      allow_new_head: false
      dtype: float16       # optional: export and validate in float16 (PyTorch); default onnx.dtype, float32
      layout: [optimum, transformers.js]  # optional; default onnx.layout, optimum (see hatch_onnx.layouts)
```
This module is the schema alone (pydantic, imported only when a plan is not memoised);
:mod:`hatch_onnx.params` reads the file, :mod:`hatch_onnx.plan` checks each checkpoint
against the registry.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hatch_onnx.errors import ParamsError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # use fullmatch: "$" would let a trailing newline in
# Names a model cannot take: the files beside the models in an output folder.
RESERVED_NAMES = frozenset({"manifest.json", "__init__.py"})
MAX_OPSET_ANY = 23  # the newest any of our exporters writes (see hatch_onnx.models._support.MAX_OPSET)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# Optimised and quantised graphs made from each export (see hatch_onnx.variants).
Variant = Literal["o1", "o2", "o3", "int8", "fp16", "int4"]
# The precision a graph is exported and validated in (PyTorch checkpoints; see hatch_onnx.exporting).
Dtype = Literal["float32", "float16"]
# Who exports a build's misses: this machine's worker pool, or a Ray cluster (hatch_onnx.ray_executor).
Executor = Literal["local", "ray"]
# Where a folder's files go for each consumer (see hatch_onnx.layouts); a list carries several.
LayoutName = Literal["optimum", "transformers.js"]
Layout = Union[LayoutName, Annotated[list[LayoutName], Field(min_length=1)]]
# The cosine floors of the lossy variants: {int8: 0.98, fp16: 0.99, int4: 0.95} unless params.yaml says otherwise.
MinCosine = dict[Literal["int8", "fp16", "int4"], Annotated[float, Field(gt=0, le=1)]]


class ModelParams(_Strict):
    checkpoint: str
    features: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    framework: Literal["auto", "pt", "tf"] = "auto"
    atol: Optional[float] = Field(default=None, gt=0, allow_inf_nan=False)
    opset: Optional[int] = Field(default=None, ge=7, le=MAX_OPSET_ANY)
    # None: fused for the rotary decoders it writes (hatch_onnx.fused.writes), else torchscript
    exporter: Optional[Literal["torchscript", "dynamo", "genai", "fused"]] = None
    allow_new_head: bool = False
    variants: Optional[list[Variant]] = None  # default: onnx.variants
    min_cosine: Optional[MinCosine] = None  # per variant, over onnx.min_cosine
    fp16_io: bool = False  # fp16 variant: float inputs and outputs in fp16 too (default: kept fp32)
    dtype: Optional[Dtype] = None  # default: onnx.dtype
    layout: Optional[Layout] = None  # default: onnx.layout

    @field_validator("atol", mode="before")
    @classmethod
    def _int_is_a_float(cls, value):  # YAML writes 1 for 1.0; strict mode would refuse it
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class OnnxParams(_Strict):
    opset: Optional[int] = Field(default=None, ge=7, le=MAX_OPSET_ANY)
    atol: Optional[float] = Field(default=None, gt=0, allow_inf_nan=False)
    cache: Optional[str] = None
    remote: Optional[str] = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9+.-]*://")  # an fsspec URL; $HATCH_ONNX_REMOTE overrides
    # Ed25519 key files (see hatch_onnx.signing), relative to params.yaml; the environment overrides
    signing_key: Optional[str] = None  # private, PEM PKCS#8: sign uploads and manifests ($HATCH_ONNX_SIGNING_KEY)
    trusted_keys: list[str] = Field(default_factory=list)  # public, PEM: accept only entries they signed ($HATCH_ONNX_TRUSTED_KEYS)
    executor: Executor = "local"  # build --executor overrides
    variants: list[Variant] = Field(default_factory=list)
    min_cosine: MinCosine = Field(default_factory=dict)
    dtype: Dtype = "float32"
    layout: Layout = "optimum"
    models: dict[str, ModelParams] = Field(min_length=1)

    _int_is_a_float = field_validator("atol", mode="before")(ModelParams._int_is_a_float.__func__)


class ParamsFile(_Strict):
    onnx: OnnxParams


def _key_path(loc: tuple) -> str:
    """pydantic's location tuple as ``onnx.models.bert-tiny.features[1]``."""
    path = ""
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool")):
            continue  # the branch of a union pydantic tried (``literal[...]``, ``list[...]``): not a key
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def parse_params(data: object, source: str = "params.yaml") -> ParamsFile:
    """Validate the structure; raises :class:`ParamsError` naming the first bad key."""
    try:
        params = ParamsFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _key_path(first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = first["msg"].replace("Extra inputs are not permitted", "unknown key")
        raise ParamsError(f"{source}: {key}: {message}{more}", key=key) from None
    for name, model in params.onnx.models.items():
        key = f"onnx.models.{name}"
        if not SAFE_NAME.fullmatch(name):
            shown = key if key.isprintable() else repr(key)  # a newline in a name stays on the error's one line
            raise ParamsError(f"{source}: {shown}: model names must be safe path components (letters, digits, . _ -)", key=key)
        if name in RESERVED_NAMES:
            raise ParamsError(f"{source}: {key}: {name!r} is reserved (a file of the output folder)", key=key)
        for field in ("features", "variants"):
            values = getattr(model, field) or []
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                index = values.index(repeated[0], values.index(repeated[0]) + 1)
                raise ParamsError(f"{source}: {key}.{field}[{index}]: {repeated[0]!r} is listed twice", key=f"{key}.{field}[{index}]")
    repeated = sorted({v for v in params.onnx.variants if params.onnx.variants.count(v) > 1})
    if repeated:
        raise ParamsError(f"{source}: onnx.variants: {repeated[0]!r} is listed twice", key="onnx.variants")
    return params
