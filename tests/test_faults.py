"""The catalogue of bad input: each case one line of this table, refused in one line with exit 2,
before any model loads, writing nothing (no output folder, no cache entry).

A case is ``(id, setup, expected text)``: ``setup(tmp)`` writes what it needs under ``tmp`` and
returns the command's arguments (after ``hatch-onnx``) and extra environment variables. Cases
that must load a model to find the fault (a truncated or mismatched checkpoint) are marked slow;
they keep the loader's whole message (which tensor, which shapes) on the one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from conftest import checkpoint

BERT = str(checkpoint("bert"))


def model(**fields: Any) -> dict:
    return {"checkpoint": BERT, "features": ["default"], **fields}


def params(tmp: Path, data: Any = None, *, text: str | None = None) -> Path:
    path = tmp / "params.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data))
    return path


def build(data: Any = None, *, text: str | None = None, extra: tuple = (), env: dict | None = None) -> Callable:
    def setup(tmp: Path):
        return ["build", "--params", str(params(tmp, data, text=text)), "--out", str(tmp / "out"), *extra], env or {}
    return setup


def onnx(models: dict | None = None, **fields: Any) -> dict:
    return {"onnx": {"models": models if models is not None else {"bert": model()}, **fields}}


def export(*flags: str, model_dir: str = BERT) -> Callable:
    def setup(tmp: Path):
        return ["export", "--model", model_dir, *flags, str(tmp / "out")], {}
    return setup


def _copied(tmp: Path, change: Callable[[Path], None]) -> Path:
    folder = tmp / "ckpt"
    shutil.copytree(BERT, folder)
    change(folder)
    return folder


def checkpoint_with(change: Callable[[Path], None], *features: str) -> Callable:
    """A build of a copy of bert-tiny that ``change`` damaged."""
    def setup(tmp: Path):
        folder = _copied(tmp, change)
        return ["build", "--params", str(params(tmp, onnx({"bert": {"checkpoint": str(folder), "features": list(features or ["default"])}}))),
                "--out", str(tmp / "out")], {}
    return setup


def exported_checkpoint_with(change: Callable[[Path], None], *flags: str) -> Callable:
    """``hatch-onnx export`` of a copy of bert-tiny that ``change`` damaged."""
    def setup(tmp: Path):
        return ["export", "--model", str(_copied(tmp, change)), *flags, str(tmp / "out")], {}
    return setup


def write(name: str, content: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(content)


def config_edit(**changes: Any) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))
    return change


def custom_code(name: str, data: dict) -> Callable[[Path], None]:
    """``name`` with ``data`` merged in, beside an ``evil.py`` that leaves a marker if it is ever imported."""
    def change(folder: Path) -> None:
        file = folder / name
        current = json.loads(file.read_text()) if file.is_file() else {}
        file.write_text(json.dumps({**current, **data}))
        (folder / "evil.py").write_text("import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('ran')\n"
                                        "class EvilFE: pass\nclass Tok: pass\nclass Proc: pass\nclass Cfg: pass\n")
    return change


def cache_is_a_file(args: list[str]) -> Callable:
    def setup(tmp: Path):
        (tmp / "cachefile").write_text("not a folder")
        command = [a.replace("PARAMS", str(params(tmp, onnx()))) for a in args]
        return command, {"HATCH_ONNX_CACHE": str(tmp / "cachefile")}
    return setup


def output_under_a_file(tmp: Path):
    (tmp / "afile").write_text("x")
    return ["export", "--model", BERT, str(tmp / "afile" / "out")], {}


def output_is_a_file(tmp: Path):
    (tmp / "out").write_text("x")
    return ["export", "--model", BERT, str(tmp / "out")], {}


def key_file(kind: str) -> Callable[[Path], Path]:
    """A key file of ``kind``: ``missing``, ``garbage``, ``rsa`` (not Ed25519) or ``public`` (where a private one goes)."""
    def write_key(tmp: Path) -> Path:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

        path = tmp / f"{kind}.pem"
        if kind == "garbage":
            path.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
        elif kind == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
            path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        elif kind == "public":
            public = ed25519.Ed25519PrivateKey.generate().public_key()
            path.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return path
    return write_key


def build_with_key(setting: str, kind: str, via_env: bool = False) -> Callable:
    """A build whose ``signing_key`` or ``trusted_keys`` names a bad key file (in params.yaml or the environment)."""
    def setup(tmp: Path):
        path = str(key_file(kind)(tmp))
        if via_env:
            env = {"HATCH_ONNX_SIGNING_KEY" if setting == "signing_key" else "HATCH_ONNX_TRUSTED_KEYS": path}
            return build(onnx(), env=env)(tmp)
        return build(onnx(**{setting: path if setting == "signing_key" else [path]}))(tmp)
    return setup


def verify_of(make: Callable[[Path], Path], *flags: str) -> Callable:
    def setup(tmp: Path):
        return ["verify", str(make(tmp)), *flags], {}
    return setup


def existing_params_for_init(tmp: Path):
    (tmp / "params.yaml").write_text("onnx: {}\n")
    return ["init", "--model", BERT, "--dir", str(tmp)], {}


CASES: list[tuple[str, Callable, str]] = [
    # --- params.yaml: the schema ---------------------------------------------------------
    ("unknown-top-key", build({**onnx(), "extra": 1}), "extra: unknown key"),
    ("unknown-onnx-key", build(onnx(colour="red")), "onnx.colour: unknown key"),
    ("unknown-model-key", build(onnx({"bert": model(speed="fast")})), "onnx.models.bert.speed"),
    ("opset-string", build(onnx(opset="seventeen")), "onnx.opset"),
    ("opset-too-low", build(onnx(opset=6)), "onnx.opset"),
    ("opset-huge", build(onnx(opset=1000000000)), "onnx.opset"),
    ("opset-above-torchscript", build(onnx(opset=22)), "onnx.opset: opset 22 is above 20"),
    ("model-opset-above-torchscript", build(onnx({"bert": model(opset=21)})), "onnx.models.bert.opset"),
    ("atol-negative", build(onnx(atol=-1.0)), "onnx.atol"),
    ("atol-zero", build(onnx(atol=0.0)), "onnx.atol"),
    ("atol-infinite", build(text="onnx:\n  atol: .inf\n  models:\n    bert:\n      checkpoint: " + BERT + "\n"), "onnx.atol"),
    ("atol-nan", build(text="onnx:\n  atol: .nan\n  models:\n    bert:\n      checkpoint: " + BERT + "\n"), "onnx.atol"),
    ("model-atol-infinite", build(text="onnx:\n  models:\n    bert:\n      checkpoint: " + BERT + "\n      atol: .inf\n"),
     "onnx.models.bert.atol"),
    ("atol-string", build(onnx(atol="tight")), "onnx.atol"),
    ("features-not-a-list", build(onnx({"bert": model(features="default")})), "onnx.models.bert.features"),
    ("features-empty", build(onnx({"bert": model(features=[])})), "onnx.models.bert.features"),
    ("features-duplicate", build(onnx({"bert": model(features=["default", "masked-lm", "default"])})),
     "onnx.models.bert.features[2]: 'default' is listed twice"),
    ("feature-unsupported", build(onnx({"bert": model(features=["seq2seq-lm"])})), "onnx.models.bert.features[0]"),
    ("feature-unknown", build(onnx({"bert": model(features=["teleport"])})), "onnx.models.bert.features[0]"),
    ("feature-unavailable", build(onnx({"flaubert": model(checkpoint=str(checkpoint("flaubert")), features=["causal-lm"])})),
     "cannot export feature 'causal-lm'"),
    ("framework-unknown", build(onnx({"bert": model(framework="jax")})), "onnx.models.bert.framework"),
    ("framework-without-weights", build(onnx({"bert": model(framework="tf")})), "onnx.models.bert.framework"),
    ("tf-feature-without-class", build(onnx({"g": model(checkpoint=str(checkpoint("gpt2-tf")), features=["token-classification"])})),
     "with TensorFlow"),
    ("exporter-unknown", build(onnx({"bert": model(exporter="magic")})), "onnx.models.bert.exporter"),
    ("allow-new-head-string", build(onnx({"bert": model(allow_new_head="yes")})), "onnx.models.bert.allow_new_head"),
    ("variant-unknown", build(onnx({"bert": model(variants=["o4"])})), "onnx.models.bert.variants"),
    ("variant-duplicate", build(onnx({"bert": model(variants=["int8", "int8"])})), "'int8' is listed twice"),
    ("variants-default-duplicate", build(onnx(variants=["o2", "o2"])), "onnx.variants"),
    ("min-cosine-above-one", build(onnx(min_cosine={"int8": 1.5})), "onnx.min_cosine"),
    ("min-cosine-for-o2", build(onnx(min_cosine={"o2": 0.9})), "onnx.min_cosine"),
    ("remote-not-a-url", build(onnx(remote="bucket/prefix")), "onnx.remote"),
    ("dtype-unknown", build(onnx(dtype="float8")), "onnx.dtype"),
    ("model-dtype-bfloat16", build(onnx({"bert": model(dtype="bfloat16")})), "onnx.models.bert.dtype"),
    ("dtype-tensorflow", build(onnx({"b": model(checkpoint=str(checkpoint("bert-tf")), dtype="float16")})),
     "onnx.models.b.dtype: float16 exports PyTorch checkpoints only"),
    ("dtype-with-variants", build(onnx(dtype="float16", variants=["int8"])), "onnx.dtype: variants (int8) are made from float32 exports"),
    ("models-empty", build(onnx({})), "onnx.models"),
    ("models-missing", build({"onnx": {"opset": 14}}), "onnx.models"),
    ("params-a-list", build(text="- onnx\n"), "params.yaml"),
    ("name-with-slash", build(onnx({"a/b": model()})), "onnx.models.a/b"),
    ("name-escaping", build(onnx({"../escape": model()})), "onnx.models.../escape"),
    ("name-trailing-newline", build(onnx({"bert\n": model()})), "safe path components"),
    ("name-hidden", build(onnx({".bert": model()})), "safe path components"),
    ("name-manifest", build(onnx({"manifest.json": model()})), "reserved"),
    ("yaml-duplicate-key", build(text="onnx:\n  opset: 14\n  opset: 15\n  models:\n    bert:\n      checkpoint: " + BERT + "\n"),
     "key 'opset' is given twice (line 3)"),
    ("yaml-duplicate-model", build(text=f"onnx:\n  models:\n    bert:\n      checkpoint: {BERT}\n    bert:\n      checkpoint: {BERT}\n"),
     "key 'bert' is given twice"),
    ("yaml-invalid", build(text="onnx: [unclosed\n"), "not valid YAML"),
    ("params-missing", lambda tmp: (["build", "--params", str(tmp / "nope.yaml")], {}), "params file not found"),
    ("only-unknown", build(onnx(), extra=("--only", "nope")), "--only nope"),
    ("jobs-zero", build(onnx(), extra=("-j", "0")), "-j/--jobs"),
    # --- checkpoints named by params.yaml ------------------------------------------------
    ("checkpoint-missing", build(onnx({"bert": model(checkpoint="/no/such/folder")})), "onnx.models.bert.checkpoint"),
    ("config-missing", checkpoint_with(lambda f: (f / "config.json").unlink()), "config.json: missing"),
    ("config-not-json", checkpoint_with(write("config.json", "{not json")), "not a readable JSON object"),
    ("config-not-an-object", checkpoint_with(write("config.json", "[1, 2]")), "config.json"),
    ("config-no-model-type", checkpoint_with(write("config.json", "{}")), "no model_type"),
    ("model-type-unknown", checkpoint_with(config_edit(model_type="llama-ish")), "'llama-ish' is not supported"),
    ("weights-missing", checkpoint_with(lambda f: (f / "model.safetensors").unlink()), "no weights"),
    ("config-auto-map", checkpoint_with(config_edit(auto_map={"AutoModel": "modeling_mine.MyModel"})),
     "trust_remote_code"),
    ("preprocessor-auto-map", exported_checkpoint_with(custom_code("preprocessor_config.json", {"auto_map": {"AutoFeatureExtractor": "evil.EvilFE"}}),
                                                       "--preprocessor", "feature_extractor"), "preprocessor_config.json: auto_map names custom code"),
    ("tokenizer-auto-map", checkpoint_with(custom_code("tokenizer_config.json", {"auto_map": {"AutoTokenizer": ["evil.Tok", None]}})),
     "tokenizer_config.json: auto_map names custom code"),
    ("processor-auto-map", checkpoint_with(custom_code("processor_config.json", {"auto_map": {"AutoProcessor": "evil.Proc"}})),
     "processor_config.json: auto_map names custom code"),
    ("nested-config-auto-map", checkpoint_with(config_edit(text_config={"hidden_size": 8, "auto_map": {"AutoConfig": "evil.Cfg"}})),
     "config.json: text_config.auto_map names custom code"),
    ("config-auto-map-unknown-type", checkpoint_with(config_edit(model_type="my-arch", auto_map={"AutoModel": "modeling_mine.MyModel"})),
     "auto_map names custom code (AutoModel: modeling_mine.MyModel)"),
    ("out-is-the-checkpoint", build(onnx(), extra=("--out", BERT)), "--out"),
    ("out-inside-the-checkpoint", build(onnx(), extra=("--out", BERT + "/onnx")), "lies inside the checkpoint"),
    ("out-inside-the-cache", lambda tmp: build(onnx(), extra=("--out", str(tmp / "cache" / "v1" / "mine")),
                                               env={"HATCH_ONNX_CACHE": str(tmp / "cache")})(tmp), "lies inside the cache"),
    ("out-contains-the-cache", lambda tmp: build(onnx(), extra=("--out", str(tmp)), env={"HATCH_ONNX_CACHE": str(tmp / "cache")})(tmp),
     "contains the cache"),
    # --- the cache -----------------------------------------------------------------------
    ("cache-is-a-file-build", cache_is_a_file(["build", "--params", "PARAMS"]), "not a folder"),
    ("cache-is-a-file-verify", cache_is_a_file(["cache", "verify", "--params", "PARAMS"]), "not a folder"),
    ("cache-ls-remote-without-remote", cache_is_a_file(["cache", "push", "--params", "PARAMS"]), "no remote cache"),
    # --- hatch-onnx export ---------------------------------------------------------------
    ("export-atol-negative", export("--atol", "-1"), "atol -1.0: must be a positive finite number"),
    ("export-atol-infinite", export("--atol", "inf"), "atol inf"),
    ("export-atol-nan", export("--atol", "nan"), "atol nan"),
    ("export-atol-word", export("--atol", "tight"), "--atol"),
    ("export-opset-word", export("--opset", "abc"), "--opset"),
    ("export-opset-huge", export("--opset", "1000000000"), "above 20"),
    ("export-opset-too-low", export("--opset", "9"), "below the minimum 14"),
    ("export-dynamo-opset-above", export("--opset", "24", "--exporter", "dynamo"), "above 23"),
    ("export-output-is-a-file", output_is_a_file, "is a file"),
    ("export-output-under-a-file", output_under_a_file, "is a file"),
    ("export-model-missing", export(model_dir="/no/such/checkpoint"), "checkpoint directory not found"),
    ("export-feature-unsupported", export("--feature", "seq2seq-lm"), "does not support feature 'seq2seq-lm'"),
    ("export-feature-unavailable", export("--feature", "causal-lm", model_dir=str(checkpoint("flaubert"))), "cannot export"),
    ("export-framework-tf-without-weights", export("--framework", "tf"), "--framework tf"),
    ("export-framework-unknown", export("--framework", "jax"), "--framework"),
    ("export-unknown-flag", export("--fast"), "unrecognized arguments"),
    ("export-dtype-unknown", export("--dtype", "bf16"), "--dtype: invalid choice: 'bf16'"),
    ("export-dtype-tensorflow", export("--dtype", "float16", model_dir=str(checkpoint("bert-tf"))), "dtype float16 exports PyTorch checkpoints only"),
    ("export-auto-map", exported_checkpoint_with(config_edit(auto_map={"AutoModelForMaskedLM": "custom.Bert"})), "never runs a checkpoint's own code"),
    # --- signing keys: refused before any model loads ----------------------------------
    ("signing-key-missing", build_with_key("signing_key", "missing"), "signing key"),
    ("signing-key-garbage", build_with_key("signing_key", "garbage"), "not an unencrypted PEM private key"),
    ("signing-key-rsa", build_with_key("signing_key", "rsa", via_env=True), "not an Ed25519 key"),
    ("signing-key-is-public", build_with_key("signing_key", "public"), "not an unencrypted PEM private key"),
    ("trusted-key-missing", build_with_key("trusted_keys", "missing", via_env=True), "trusted key"),
    ("trusted-key-garbage", build_with_key("trusted_keys", "garbage"), "not a PEM public key"),
    ("trusted-keys-not-a-list", build(onnx(trusted_keys="k.pem")), "onnx.trusted_keys"),
    ("pull-with-a-bad-key", lambda tmp: (["cache", "pull", "--params", str(params(tmp, onnx(remote="file:///nowhere",
                                          signing_key=str(key_file("rsa")(tmp)))))], {}), "not an Ed25519 key"),
    # --- verify ----------------------------------------------------------------------------
    ("verify-missing", verify_of(lambda tmp: tmp / "nope"), "no such file, folder or installed package"),
    ("verify-no-manifest", verify_of(lambda tmp: tmp), "holds no hatch-onnx manifest.json"),
    ("verify-not-a-wheel", verify_of(lambda tmp: (tmp / "x.whl", (tmp / "x.whl").write_text("no zip"))[0]), "not a folder, a wheel"),
    ("verify-bad-trusted-key", verify_of(lambda tmp: tmp, "--trusted-key", "/nope.pem"), "trusted key /nope.pem"),
    # --- other commands ------------------------------------------------------------------
    ("hash-missing", lambda tmp: (["hash", str(tmp / "nope")], {}), "not found"),
    ("show-missing", lambda tmp: (["show", str(tmp / "nope")], {}), "not found"),
    ("init-over-existing", existing_params_for_init, "already exists"),
    ("cache-unknown-action", lambda tmp: (["cache", "explode"], {}), "invalid choice"),
    ("no-command", lambda tmp: ([], {}), "required"),
]

# Faults found only by loading the checkpoint: the loader's whole message, on one line.
LOADER_CASES: list[tuple[str, Callable, str]] = [
    ("weights-truncated", exported_checkpoint_with(lambda f: os.truncate(f / "model.safetensors", 5000)),
     "SafetensorError: Error while deserializing header: incomplete metadata, file not fully covered"),
    ("weights-mismatched", exported_checkpoint_with(config_edit(intermediate_size=40)),
     "size mismatch"),  # then which tensor and both shapes: 4.57 says it in the error, 5.x in its report
    ("head-weights-missing", exported_checkpoint_with(lambda f: None, "--feature", "sequence-classification"), "--allow-new-head"),
]


def run(setup: Callable, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    args, env = setup(tmp_path)
    cache = tmp_path / "cache"
    full_env = {**os.environ, "HATCH_ONNX_CACHE": str(cache), **env}
    result = subprocess.run([sys.executable, "-m", "hatch_onnx", *args], capture_output=True, text=True, env=full_env, timeout=600)
    return result, cache


def check(result: subprocess.CompletedProcess, cache: Path, tmp_path: Path, expected: str) -> None:
    if expected == "size mismatch":
        assert "torch.Size([" in result.stderr and "40])" in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("hatch-onnx: error:"), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").is_dir() or not any((tmp_path / "out").iterdir())
    assert not list(cache.glob("v1/*/*")) if cache.is_dir() else True
    assert not list(tmp_path.rglob("RAN")), "a checkpoint's own code ran"


@pytest.mark.parametrize("case, setup, expected", CASES, ids=[case for case, _, _ in CASES])
def test_bad_input_is_refused_in_one_line_before_any_work(case, setup, expected, tmp_path):
    result, cache = run(setup, tmp_path)
    check(result, cache, tmp_path, expected)


@pytest.mark.slow
@pytest.mark.parametrize("case, setup, expected", LOADER_CASES, ids=[case for case, _, _ in LOADER_CASES])
def test_a_bad_checkpoint_is_bad_input_with_the_loaders_whole_message(case, setup, expected, tmp_path):
    result, cache = run(setup, tmp_path)
    check(result, cache, tmp_path, expected)


def test_the_catalogue_is_large_enough():
    assert len(CASES) + len(LOADER_CASES) >= 60


@pytest.mark.slow
def test_a_bad_checkpoint_inside_a_build_is_exit_2_with_the_workers_line(tmp_path):
    """The worker's error type travels back: the build's last line is the worker's message, exit 2."""
    result, cache = run(checkpoint_with(lambda f: os.truncate(f / "model.safetensors", 5000)), tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hatch-onnx: error: 1 of 1 job(s) failed: bert:default") and "incomplete metadata" in last
    assert not (tmp_path / "out").exists() and not list(cache.glob("v1/*/*"))
