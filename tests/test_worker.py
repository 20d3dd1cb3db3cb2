"""The export worker: job after job over JSON lines, answers on stdout only, errors with their exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import checkpoint
from hatch_onnx.pool import Worker, worker_env
from hatch_onnx.worker import PROTOCOL_MARK

pytestmark = pytest.mark.slow


def request(model: str, feature: str, output, **extra) -> dict:
    return {"model": str(checkpoint(model)), "feature": feature, "framework": "pt", "opset": None, "atol": None,
            "exporter": "torchscript", "allow_new_head": False, "output": str(output), "report": str(output / "report.json"), **extra}


def test_one_worker_runs_several_jobs_and_reports_each(tmp_path):
    lines = [json.dumps(request("bert", "default", tmp_path / "a")),
             json.dumps(request("vit", "causal-lm", tmp_path / "b")),  # bad input: vit has no causal-lm
             json.dumps(request("bert", "masked-lm", tmp_path / "c"))]
    proc = subprocess.run([sys.executable, "-m", "hatch_onnx.worker"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, env=worker_env("pt"), timeout=600)
    assert proc.returncode == 0, proc.stderr
    stdout = proc.stdout.splitlines()
    assert all(line.startswith(PROTOCOL_MARK) for line in stdout)  # libraries' prints went to stderr
    replies = [json.loads(line[len(PROTOCOL_MARK):]) for line in stdout]
    assert [reply["ok"] for reply in replies] == [True, False, True]
    assert replies[0]["report"]["feature"] == "default" and (tmp_path / "a" / "model.onnx").is_file()
    assert (tmp_path / "a" / "report.json").is_file()
    bad = replies[1]
    assert bad["exit_code"] == 2 and bad["type"] == "UnsupportedFeatureError" and "causal-lm" in bad["error"]
    assert not (tmp_path / "b" / "model.onnx").exists()
    assert replies[2]["report"]["feature"] == "masked-lm"


def test_pool_worker_survives_a_failed_job_and_reports_its_death(tmp_path):
    worker = Worker(sys.executable, "pt")
    try:
        bad = worker.run(request("vit", "causal-lm", tmp_path / "x"))
        assert not bad["ok"] and worker.alive  # a failed job does not end the worker
        good = worker.run(request("bert", "default", tmp_path / "y"))
        assert good["ok"] and good["log"] == []
        worker._process.kill()  # as the out-of-memory killer would
        from hatch_onnx.errors import WorkerDied

        with pytest.raises(WorkerDied, match="killed by signal 9"):
            worker.run(request("bert", "masked-lm", tmp_path / "z"))
    finally:
        worker.close()


def test_a_failed_answer_carries_what_the_worker_wrote_to_stderr_meanwhile(tmp_path):
    """Only the job's own lines: what the worker wrote before the request stays out (a Ray node's build sees nothing else)."""
    fake = tmp_path / "python"  # a stand-in interpreter speaking the protocol; it ignores `-m hatch_onnx.worker`
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'started' >&2\n"
        "while read -r line; do\n"
        "  echo \"warning: the export of this job went wrong\" >&2\n"
        f"  echo '{PROTOCOL_MARK}{{\"ok\": false, \"error\": \"boom\", \"exit_code\": 1, \"log\": []}}'\n"
        "done\n")
    fake.chmod(0o755)
    worker = Worker(str(fake), "pt")
    try:
        import time

        time.sleep(0.5)  # let "started" land before the request
        reply = worker.run({"model": "m"})
        assert reply["ok"] is False and reply["stderr"] == ["warning: the export of this job went wrong"], reply
        assert worker.run({"model": "m"})["stderr"] == ["warning: the export of this job went wrong"]  # not the first job's
    finally:
        worker.close()
