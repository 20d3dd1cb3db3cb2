"""params -> jobs: each model resolved once, errors naming the key before any work, the plan memo."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest

from conftest import checkpoint
from hatch_onnx.errors import ParamsError
from hatch_onnx.params import read_params
from hatch_onnx.plan import Job, resolve_plan
from test_params import base, write


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d["onnx"].update(colour="red"), "onnx.colour"),
        (lambda d: d["onnx"]["models"]["bert-tiny"].update(checkpoint="/no/such/folder"), "onnx.models.bert-tiny.checkpoint"),
        (lambda d: d["onnx"]["models"]["bert-tiny"]["features"].append("seq2seq-lm"), "onnx.models.bert-tiny.features[2]"),
        (lambda d: d["onnx"]["models"]["bert-tiny"].update(framework="tf"), "onnx.models.bert-tiny.framework"),
        (lambda d: d["onnx"]["models"].update({"gpt2-tf": {"checkpoint": str(checkpoint("gpt2-tf")), "features": ["token-classification"]}}),
         "onnx.models.gpt2-tf.features[0]"),
    ],
)
def test_rejections_name_the_key_and_exit_2_before_any_work(tmp_path, mutate, key):
    data = base()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ParamsError) as info:
        resolve_plan(read_params(path))
    assert info.value.key == key and "\n" not in str(info.value)
    result = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and key in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_only_name(tmp_path):
    path = write(tmp_path, base())
    result = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(path), "--only", "nope"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--only nope" in result.stderr


def test_jobs_carry_what_determines_the_export(tmp_path):
    data = base(atol=1e-3)
    data["onnx"]["opset"] = 11  # below bert's minimum (14): the minimum wins
    data["onnx"]["models"]["vit"] = {"checkpoint": str(checkpoint("vit")), "features": ["image-classification"], "opset": 17}
    jobs = resolve_plan(read_params(write(tmp_path, data)))
    assert [(j.label, j.model_type, j.framework, j.opset, j.atol) for j in jobs] == [
        ("bert-tiny:default", "bert", "pt", 14, 1e-3), ("bert-tiny:masked-lm", "bert", "pt", 14, 1e-3),
        ("vit:image-classification", "vit", "pt", 17, None),
    ]
    assert [j.label for j in resolve_plan(read_params(write(tmp_path, data)), only=["vit"])] == ["vit:image-classification"]


def test_each_model_is_resolved_once(tmp_path, monkeypatch):
    from hatch_onnx import checkpoints as features

    reads = []
    real = features.read_model_type
    monkeypatch.setattr(features, "read_model_type", lambda path: reads.append(path) or real(path))
    data = base()
    data["onnx"]["models"]["bert-tiny"]["features"] = ["default", "masked-lm", "sequence-classification", "question-answering"]
    assert len(resolve_plan(read_params(write(tmp_path, data)))) == 4
    assert reads == [checkpoint("bert")]


def test_job_request_is_the_exporters_request():
    from hatch_onnx.exporting import ExportRequest

    job = Job("bert-tiny", "masked-lm", checkpoint("bert"), "bert", "pt", 14, None, "torchscript", False)
    request = job.request()
    assert set(request) <= {field.name for field in dataclasses.fields(ExportRequest)}
    assert ExportRequest(**request).feature == "masked-lm"
    assert job.head == Job(**{**dataclasses.asdict(job), "feature": "masked-lm"}).head != \
        Job(**{**dataclasses.asdict(job), "feature": "default"}).head


def test_plan_is_memoised_and_invalidated(tmp_path, monkeypatch):
    from hatch_onnx import plan as plan_module

    ckpt = tmp_path / "bert"
    shutil.copytree(checkpoint("bert"), ckpt)
    data = base()
    data["onnx"]["models"]["bert-tiny"]["checkpoint"] = str(ckpt)
    path = write(tmp_path, data)
    jobs = resolve_plan(read_params(path))
    assert [j.label for j in jobs] == ["bert-tiny:default", "bert-tiny:masked-lm"]

    calls = []
    real = plan_module._resolve
    monkeypatch.setattr(plan_module, "_resolve", lambda *a: calls.append(a) or real(*a))
    assert resolve_plan(read_params(path)) == jobs and calls == []  # memo hit: no validation
    assert resolve_plan(read_params(path), only=["bert-tiny"]) == jobs and len(calls) == 1  # another selection
    stat = (ckpt / "config.json").stat()
    os.utime(ckpt / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    resolve_plan(read_params(path))
    assert len(calls) == 2  # the checkpoint's config changed: validated again
    (ckpt / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(ParamsError, match=r"features\[1\]"):
        resolve_plan(read_params(path))  # ... and the change is caught (vit has no masked-lm)
