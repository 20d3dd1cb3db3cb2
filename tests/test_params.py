"""params.yaml: each rejection names the key path and exits 2 before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import checkpoint
from hatch_onnx.errors import ParamsError
from hatch_onnx.params import load_params


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
        (lambda d: d["onnx"]["models"]["bert-tiny"].update(checkpoint="/no/such/folder"), "onnx.models.bert-tiny.checkpoint"),
        (lambda d: d["onnx"]["models"]["bert-tiny"]["features"].append("seq2seq-lm"), "onnx.models.bert-tiny.features[2]"),
        (lambda d: d["onnx"]["models"].update({"../escape": d["onnx"]["models"]["bert-tiny"]}), "onnx.models.../escape"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["onnx"]["models"]["bert-tiny"].update(framework="tf"), "onnx.models.bert-tiny.framework"),
        (lambda d: d["onnx"]["models"].update({"gpt2-tf": {"checkpoint": str(checkpoint("gpt2-tf")), "features": ["token-classification"]}}),
         "onnx.models.gpt2-tf.features[0]"),
    ],
)
def test_rejections_name_the_key(tmp_path, mutate, key):
    data = base()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert info.value.key == key
    assert f": {key}:" in str(info.value) and "\n" not in str(info.value)
    result = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and key in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_valid_params_and_defaults(tmp_path):
    params, types = load_params(write(tmp_path, base(atol=1)))
    model = params.onnx.models["bert-tiny"]
    assert model.atol == 1.0 and model.framework == "auto" and model.exporter == "torchscript"
    assert types == {"bert-tiny": "bert"}


def test_unknown_only_name(tmp_path):
    path = write(tmp_path, base())
    result = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(path), "--only", "nope"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--only nope" in result.stderr


def test_plan_is_memoised_and_invalidated(tmp_path, monkeypatch):
    import os
    import shutil

    from hatch_onnx import params as params_module
    from hatch_onnx.plan import load_plan

    ckpt = tmp_path / "bert"
    shutil.copytree(checkpoint("bert"), ckpt)
    data = base()
    data["onnx"]["models"]["bert-tiny"]["checkpoint"] = str(ckpt)
    path = write(tmp_path, data)
    jobs, _ = load_plan(path)
    assert [j.label for j in jobs] == ["bert-tiny:default", "bert-tiny:masked-lm"]

    calls = []
    real = params_module.load_params
    monkeypatch.setattr(params_module, "load_params", lambda p: calls.append(p) or real(p))
    assert load_plan(path)[0] == jobs and calls == []  # memo hit: no validation
    assert load_plan(path, only=["bert-tiny"])[0] == jobs and len(calls) == 1  # another selection
    stat = (ckpt / "config.json").stat()
    os.utime(ckpt / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_plan(path)
    assert len(calls) == 2  # the checkpoint's config changed: validated again
    (ckpt / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(ParamsError, match=r"features\[1\]"):
        load_plan(path)  # ... and the change is caught (vit has no masked-lm)
