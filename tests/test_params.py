"""params.yaml read once: the schema's rejections name the key; the cache location is resolved by the reader."""

from __future__ import annotations

import sys

import pytest
import yaml

from conftest import checkpoint
from hatch_onnx.errors import ParamsError
from hatch_onnx.params import read_params


def write(tmp_path, data) -> object:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def base(**model) -> dict:
    return {"onnx": {"models": {"bert-tiny": {"checkpoint": str(checkpoint("bert")), "features": ["default", "masked-lm"], **model}}}}


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d["onnx"].update(colour="red"), "onnx.colour"),
        (lambda d: d["onnx"]["models"]["bert-tiny"].update(speed="fast"), "onnx.models.bert-tiny.speed"),
        (lambda d: d["onnx"].update(opset="seventeen"), "onnx.opset"),
        (lambda d: d["onnx"]["models"]["bert-tiny"].update(features="default"), "onnx.models.bert-tiny.features"),
        (lambda d: d["onnx"]["models"]["bert-tiny"].update(framework="jax"), "onnx.models.bert-tiny.framework"),
        (lambda d: d["onnx"]["models"].update({"../escape": d["onnx"]["models"]["bert-tiny"]}), "onnx.models.../escape"),
        (lambda d: d.update(extra=1), "extra"),
    ],
)
def test_schema_rejections_name_the_key(tmp_path, mutate, key):
    data = base()
    mutate(data)
    source = read_params(write(tmp_path, data))  # reading does not validate: a memoised plan never needs to
    with pytest.raises(ParamsError) as info:
        source.params
    assert info.value.key == key
    assert f": {key}:" in str(info.value) and "\n" not in str(info.value)


def test_valid_params_and_defaults(tmp_path):
    source = read_params(write(tmp_path, base(atol=1)))
    model = source.params.onnx.models["bert-tiny"]
    assert model.atol == 1.0 and model.framework == "auto" and model.exporter is None  # the job's: hatch_onnx.plan
    assert source.checkpoint(model) == checkpoint("bert")


def test_relative_checkpoint_is_relative_to_the_params_file(tmp_path, monkeypatch):
    data = base()
    data["onnx"]["models"]["bert-tiny"]["checkpoint"] = "ckpt/bert"
    source = read_params(write(tmp_path, data))
    monkeypatch.chdir("/")
    assert source.checkpoint(source.params.onnx.models["bert-tiny"]) == tmp_path / "ckpt" / "bert"


def test_cache_location_read_once_with_the_file(tmp_path, monkeypatch):
    data = base()
    data["onnx"]["cache"] = "here/cache"
    path = write(tmp_path, data)
    monkeypatch.delenv("HATCH_ONNX_CACHE")
    assert read_params(path).cache_root == tmp_path / "here" / "cache"
    monkeypatch.setenv("HATCH_ONNX_CACHE", str(tmp_path / "env"))
    assert read_params(path).cache_root == tmp_path / "env"  # the variable wins
    monkeypatch.delenv("HATCH_ONNX_CACHE")
    data["onnx"]["cache"] = 7  # malformed: the schema says so; the reader still knows where the cache goes
    assert read_params(write(tmp_path, data)).cache_root == tmp_path / ".hatch-onnx-cache"


def test_reading_imports_no_schema(tmp_path):
    import subprocess

    path = write(tmp_path, base())
    code = f"import sys; from hatch_onnx.params import read_params; read_params({str(path)!r}); print('pydantic' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("content, message", [(None, "params file not found"), ("onnx: [unclosed", "not valid YAML")])
def test_missing_or_broken_file(tmp_path, content, message):
    path = tmp_path / "params.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ParamsError, match=message):
        read_params(path)


def test_dvc_stages_declare_every_params_key_that_changes_an_output():
    """Derived from the schema: every onnx.* setting but the models (each stage declares its own
    entry), where the cache lives, the remote, the executor and the keys (none changes a stage's
    output: the manifest's signature is no stage's output)."""
    from conftest import ROOT
    from hatch_onnx.schema import OnnxParams

    expected = {f"onnx.{name}" for name in OnnxParams.model_fields} - {"onnx.models", "onnx.cache", "onnx.remote", "onnx.executor",
                                                                         "onnx.signing_key", "onnx.trusted_keys"}
    for dvc_yaml, params_yaml in ((ROOT / "dvc.yaml", ROOT / "params.yaml"),
                                  (ROOT / "hatch_onnx/templates/dvc.yaml", ROOT / "hatch_onnx/templates/params.yaml")):
        stage = yaml.safe_load(dvc_yaml.read_text())["stages"]["export"]["do"]
        assert set(stage["params"]) == expected | {"onnx.models.${key}"}, dvc_yaml
        assert "build/toolchain.json" in stage["deps"]  # an upgrade re-runs the exports
        # DVC refuses a declared key the params file lacks: the params files spell out every default
        declared = yaml.safe_load(params_yaml.read_text().replace("__FEATURES__", "[default]"))["onnx"]
        assert {f"onnx.{key}" for key in declared} >= expected, params_yaml


def test_every_variant_and_lossy_floor_is_accepted(tmp_path):
    """The schema names each variant variants.py makes (int4 too), and a floor for each lossy one."""
    from hatch_onnx.variants import LOSSY, VARIANTS

    data = base(variants=list(VARIANTS), min_cosine={v: 0.5 for v in LOSSY})
    data["onnx"]["min_cosine"] = {"int4": 0.85}
    onnx = read_params(write(tmp_path, data)).params.onnx
    assert onnx.models["bert-tiny"].variants == list(VARIANTS) and "int4" in VARIANTS
    assert onnx.models["bert-tiny"].min_cosine == {v: 0.5 for v in LOSSY} and onnx.min_cosine == {"int4": 0.85}
