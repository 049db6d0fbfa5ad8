"""A search spread over two pytest-xdist processes merges into the serial run's report."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.parity


def search_run(out, *extra):
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "parity.pytest_search", "-q", "-p", "no:cacheprovider",
           "--parity-backend", "vllm", "--parity-profile", "dev", "--parity-seed", "5", "--parity-arch", "llama", "--parity-arch", "glm4",
           "--parity-out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "vllm" / "report.json").read_text())


def content(report):
    return sorted(
        (ex["id"], ex["arch"], json.dumps(ex["config"], sort_keys=True), ex["prompts"],
         [(r["backend"], r["status"], [(row["tensor"], row["step"], row["prompt"], row["verdict"]) for row in r["rows"]])
          for r in ex["results"]])
        for ex in report["examples"]
    )


def test_xdist_merge_equals_serial(tmp_path):
    serial = search_run(tmp_path / "serial")
    parallel = search_run(tmp_path / "xdist", "-n", "2")
    assert (tmp_path / "xdist" / "gw0").is_dir() and (tmp_path / "xdist" / "gw1").is_dir(), "both processes ran"
    assert serial["summary"]["examples"] >= 2 * 3
    assert content(parallel) == content(serial)
    assert parallel["summary"] == serial["summary"]
