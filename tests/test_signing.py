"""Signed remote entries and releases: Ed25519 keys, a bucket writer without the private key, `hatch-onnx verify`.

The remote cases run against moto's S3 server (the fixtures of test_remote.py) and a file://
remote; the release cases sign a `build --out` folder and a wheel, then change one byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest
import yaml

from conftest import checkpoint
from test_remote import BUCKET, bucket, build, s3, statuses  # noqa: F401 - fixtures

from hatch_onnx.errors import BadInputError
from hatch_onnx.signing import Keys, Signer, Verifier, entry_payload

BERT_DEFAULT = {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}}


def keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """A new Ed25519 key pair as PEM files: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def params_file(tmp_path: Path, remote: str, models: dict = BERT_DEFAULT) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"onnx": {"remote": remote, "models": models}}))
    return path


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hatch_onnx", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


# --- keys and payloads, without a build --------------------------------------------------------

def test_a_signature_covers_the_key_the_files_and_the_inputs(tmp_path):
    private, public = keypair(tmp_path, "ci")
    signer = Signer(private)
    verifier = Verifier([public])
    files, inputs = {"model.onnx": (10, "ab" * 16), "report.json": (5, "cd" * 16)}, {"feature": "default", "opset": 17}
    record = signer.sign(entry_payload("k1", files, inputs))
    assert verifier.problem(entry_payload("k1", files, inputs), record) is None
    # any change to what is covered, or a signature moved to another key's entry, fails
    assert "tampered" in verifier.problem(entry_payload("k2", files, inputs), record)
    assert "tampered" in verifier.problem(entry_payload("k1", {**files, "model.onnx": (10, "ee" * 16)}, inputs), record)
    assert "tampered" in verifier.problem(entry_payload("k1", files, {**inputs, "opset": 18}), record)
    assert verifier.problem(entry_payload("k1", files, inputs), None) == "unsigned"
    other, _ = keypair(tmp_path, "other")
    assert "not trusted" in verifier.problem(entry_payload("k1", files, inputs), Signer(other).sign(entry_payload("k1", files, inputs)))
    # the key id printed in warnings is the one in the record
    assert record["key"] == signer.id and len(signer.id) == 16


def test_the_signing_keys_own_public_key_is_trusted_and_env_overrides_params(tmp_path):
    from hatch_onnx.signing import resolve_keys

    private, public = keypair(tmp_path, "ci")
    keys = resolve_keys({"signing_key": "ci.pem"}, tmp_path, environ={})
    signer, verifier = keys.load()
    assert keys.signing == tmp_path / "ci.pem" and verifier.ids == [signer.id]
    env_keys = resolve_keys({"trusted_keys": ["nope.pem"]}, tmp_path, environ={"HATCH_ONNX_TRUSTED_KEYS": f"{public}{os.pathsep}{public}"})
    assert env_keys.trusted == (public, public) and env_keys.signing is None
    assert Keys().load() == (None, None)
    with pytest.raises(BadInputError, match="trusted key .*nope.pem: unreadable"):
        resolve_keys({"trusted_keys": ["nope.pem"]}, tmp_path, environ={}).load()


# --- the remote tier -----------------------------------------------------------------------------

def _identity_graph(path: Path) -> None:
    """The attacker's graph: Identity from the first input to the first output, a few hundred bytes."""
    real = onnx.load(str(path), load_external_data=False)
    inp, out = real.graph.input[0], real.graph.output[0]
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", [inp.name], [out.name])], "evil", [inp], [out])
    onnx.save(onnx.helper.make_model(graph, opset_imports=real.opset_import), str(path))


def _tamper_consistently(entry: Path) -> None:
    """Replace the entry's graph and fix entry.json's sizes and digests to match: what a bucket writer can do."""
    from hatch_onnx.fingerprint import file_digest

    graph = entry / "model.onnx"
    _identity_graph(graph)
    record = json.loads((entry / "entry.json").read_text())
    record["files"]["model.onnx"] = {"size": graph.stat().st_size, "xxh3_128": file_digest(graph)}
    (entry / "entry.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_a_consistently_tampered_entry_is_refused_when_signed_and_served_without_keys(tmp_path):
    """The adversarial case: without keys, the remote is trusted as a whole (and this attack works);
    with them, the forged entry is refused, named with its key, and exported again."""
    remote = tmp_path / "remote"
    private, public = keypair(tmp_path, "ci")
    params = params_file(tmp_path, f"file://{remote}")
    publish = cli("build", "--params", str(params), env={"HATCH_ONNX_CACHE": str(tmp_path / "ci"), "HATCH_ONNX_SIGNING_KEY": str(private)})
    assert publish.returncode == 0, publish.stderr
    (entry,) = remote.glob("v1/*/*")
    record = json.loads((entry / "entry.json").read_text())
    assert record["signature"]["algorithm"] == "ed25519" and record["signature"]["key"] == Signer(private).id
    _tamper_consistently(entry)

    reader = {"HATCH_ONNX_TRUSTED_KEYS": str(public)}
    out = tmp_path / "out"
    read = cli("build", "--params", str(params), "--out", str(out), env={**reader, "HATCH_ONNX_CACHE": str(tmp_path / "reader")})
    assert read.returncode == 0, read.stderr
    assert statuses(read) == {"bert:default": "exported"}, read.stdout + read.stderr
    assert entry.name in read.stderr and f"signature by key {Signer(private).id} does not match" in read.stderr
    assert len(onnx.load(str(out / "bert/default/model.onnx")).graph.node) > 1  # the real graph, not the forged one
    # the reader holds only the public key: it never publishes (the forged entry stays forged)
    assert "no signing key" in read.stderr and len(onnx.load(str(entry / "model.onnx")).graph.node) == 1

    # the same forged entry, read by a machine with no keys, is served: what the README warns of
    trusting = cli("build", "--params", str(params), env={"HATCH_ONNX_CACHE": str(tmp_path / "trusting")})
    assert statuses(trusting) == {"bert:default": "fetched"}, trusting.stdout + trusting.stderr


@pytest.mark.slow
def test_unsigned_entries_are_refused_and_replaced_by_a_signed_push(bucket, tmp_path):
    """On S3: entries uploaded before signing was set up are refused by readers with keys; the
    publisher's next push replaces them with signed ones, which the readers then fetch."""
    env, client = bucket
    private, public = keypair(tmp_path, "ci")
    params = params_file(tmp_path, f"s3://{BUCKET}/team")
    assert build(params, env, tmp_path / "old")[0].returncode == 0  # unsigned upload

    reader_env = {**env, "HATCH_ONNX_TRUSTED_KEYS": str(public)}
    refused, _ = build(params, reader_env, tmp_path / "reader-1")
    assert statuses(refused) == {"bert:default": "exported"} and "unsigned: not used" in refused.stderr, refused.stderr

    push = cli("cache", "push", "--params", str(params),
               env={**env, "HATCH_ONNX_CACHE": str(tmp_path / "old"), "HATCH_ONNX_SIGNING_KEY": str(private)})
    assert push.returncode == 0 and "pushed bert:default" in push.stdout, push.stdout + push.stderr
    (marker,) = [i["Key"] for i in client.list_objects_v2(Bucket=BUCKET)["Contents"] if i["Key"].endswith("entry.json")]
    assert "signature" in json.loads(client.get_object(Bucket=BUCKET, Key=marker)["Body"].read())

    pulled = cli("cache", "pull", "--params", str(params), env={**reader_env, "HATCH_ONNX_CACHE": str(tmp_path / "reader-2")})
    assert pulled.returncode == 0 and "pulled bert:default" in pulled.stdout, pulled.stdout + pulled.stderr
    # a key that is not trusted: refused again, naming the key
    _, stranger = keypair(tmp_path, "stranger")
    other, _ = build(params, {**env, "HATCH_ONNX_TRUSTED_KEYS": str(stranger)}, tmp_path / "reader-3")
    assert statuses(other) == {"bert:default": "exported"} and f"signed by key {Signer(private).id}, which is not trusted" in other.stderr


# --- releases: the manifest's signature and provenance, `hatch-onnx verify` ----------------------

@pytest.fixture(scope="module")
def signed_out(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A `build --out` folder (bert-tiny default and masked-lm, an int8 variant) signed by a CI key."""
    tmp = tmp_path_factory.mktemp("release")
    private, public = keypair(tmp, "ci")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"onnx": {"signing_key": "ci.pem", "models": {
        "bert": {"checkpoint": str(checkpoint("bert")), "features": ["default", "masked-lm"], "variants": ["int8"]}}}}))
    out = tmp / "out"
    result = cli("build", "--params", str(params), "--out", str(out), env={"HATCH_ONNX_CACHE": str(tmp / "cache")})
    assert result.returncode == 0, result.stderr
    return out, public, private


@pytest.mark.slow
def test_the_manifest_carries_an_in_toto_provenance_statement(signed_out):
    out, _, _ = signed_out
    manifest = json.loads((out / "manifest.json").read_text())
    statement = manifest["provenance"]
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    shipped = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.parent != out)
    assert [s["name"] for s in statement["subject"]] == shipped  # every shipped file, nothing else
    import hashlib

    for subject in statement["subject"]:
        assert subject["digest"]["sha256"] == hashlib.sha256((out / subject["name"]).read_bytes()).hexdigest()
    definition = statement["predicate"]["buildDefinition"]
    fingerprint = manifest["models"]["bert"]["default"]["source"]["checkpoint_fingerprint"]
    assert {"name": "checkpoint:bert", "digest": {"xxh3_128": fingerprint}} in definition["resolvedDependencies"]
    assert any(d.get("uri", "").startswith("pkg:pypi/onnxruntime@") for d in definition["resolvedDependencies"])
    assert definition["externalParameters"]["models"]["bert"]["default"]["variants"]["int8"]["min_cosine"] > 0


@pytest.mark.slow
def test_verify_a_signed_folder_and_one_changed_byte(signed_out, tmp_path):
    import shutil

    out, public, private = signed_out
    ok = cli("verify", str(out), "--trusted-key", str(public))
    assert ok.returncode == 0 and f"signed by trusted key {Signer(private).id}" in ok.stdout, ok.stdout + ok.stderr
    _, stranger = keypair(tmp_path, "stranger")
    assert "not trusted" in cli("verify", str(out), "--trusted-key", str(stranger)).stderr

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    graph = copy / "bert/masked-lm/model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    changed = cli("verify", str(copy), "--trusted-key", str(public))
    assert changed.returncode == 1 and "bert/masked-lm/model.onnx: differs from the manifest (xxh3_128)" in changed.stderr

    shutil.copyfile(out / "bert/masked-lm/model.onnx", graph)
    (copy / "bert/default/extra.onnx").write_bytes(b"x")
    added = cli("verify", str(copy))
    assert added.returncode == 1 and "extra.onnx: not listed in the manifest" in added.stderr
    (copy / "bert/default/extra.onnx").unlink()

    manifest = json.loads((copy / "manifest.json").read_text())  # a re-written manifest no longer matches its signature
    manifest["models"]["bert"]["default"]["validation"]["atol"] = 1.0
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    forged = cli("verify", str(copy), "--trusted-key", str(public))
    assert forged.returncode == 1 and "does not match its content" in forged.stderr, forged.stderr
    (copy / "manifest.json.sig").unlink()
    unsigned = cli("verify", str(copy), "--trusted-key", str(public))
    assert unsigned.returncode == 1 and "unsigned" in unsigned.stderr
    assert cli("verify", str(copy)).returncode == 0  # no key asked for: digests and provenance hold


@pytest.mark.slow
def test_verify_a_wheel_and_its_installed_package(signed_out, tmp_path):
    """A wheel shipping the signed folder (as the hook lays it out), read in place; then "installed"
    (unpacked into a site folder) and checked by import name, before and after one byte changes."""
    out, public, _ = signed_out
    wheel = tmp_path / "our_models-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        names = []
        for path in sorted(out.rglob("*")):
            if path.is_file():
                names.append(f"our_models/onnx/{path.relative_to(out)}")
                archive.write(path, names[-1])
        archive.writestr("our_models/__init__.py", "")
        archive.writestr("our_models-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: our-models\nVersion: 1.0\n")
        archive.writestr("our_models-1.0.dist-info/RECORD", "".join(f"{name},,\n" for name in names))
    assert cli("verify", str(wheel), "--trusted-key", str(public)).returncode == 0

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {"PYTHONPATH": str(site)}
    installed = cli("verify", "our_models", "--trusted-key", str(public), env=env)
    assert installed.returncode == 0 and "our_models/onnx/manifest.json" in installed.stdout, installed.stdout + installed.stderr
    by_distribution = cli("verify", "our-models", env=env)  # the name pip knows it by
    assert by_distribution.returncode == 0 and "our_models/onnx/manifest.json" in by_distribution.stdout, by_distribution.stderr
    config = site / "our_models/onnx/bert/default/config.json"
    config.write_bytes(config.read_bytes().replace(b"{", b"{ ", 1)[:-1])  # one byte more, one less: same size
    changed = cli("verify", "our_models", "--trusted-key", str(public), env=env)
    assert changed.returncode == 1 and "bert/default/config.json: differs" in changed.stderr, changed.stderr
    assert cli("verify", "our-models", env=env).returncode == 1
