"""The one-line replay command in a report re-runs exactly that example."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

PATCH = Path(__file__).resolve().parent.parent / "fixtures" / "patches" / "hf_llama_rope_interleaved.py"
pytestmark = pytest.mark.parity


def test_replay_reproduces_the_minimal_failure(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "parity", "run", "--arch", "llama", "--backend", "transformers@wrong",
         "--patch", f"wrong={PATCH}", "--profile", "dev", "--seed", "4", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 1, run.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (minimal,) = [ex for ex in report["examples"] if ex["minimal"]]
    argv = shlex.split(minimal["replay"])
    assert argv[:2] == ["parity", "replay"] and argv[-1] == minimal["id"]
    replay = subprocess.run([sys.executable, "-m", "parity", *argv[1:]], capture_output=True, text=True, timeout=900)
    assert replay.returncode == 1, replay.stderr[-2000:]
    assert "wrong: diverged at layers.0.q_rot (step 0" in replay.stdout
    replayed = json.loads((tmp_path / "run" / f"replay-{minimal['id']}" / "report.json").read_text())
    (again,) = replayed["examples"]
    assert again["id"] == minimal["id"] and again["role"] == "replay"
    assert again["results"][0]["first_divergence"]["rel_l2"] == minimal["results"][0]["first_divergence"]["rel_l2"]
    # the same example at another dtype than the report's, when asked
    bf16 = subprocess.run([sys.executable, "-m", "parity", *argv[1:], "--dtype", "bfloat16", "--out",
                           str(tmp_path / "bf16")], capture_output=True, text=True, timeout=900)
    assert bf16.returncode == 1, bf16.stderr[-2000:]
    replayed = json.loads((tmp_path / "bf16" / "report.json").read_text())
    assert replayed["dtype"] == "bfloat16" and replayed["examples"][0]["id"] == minimal["id"]
    assert replayed["examples"][0]["results"][0]["first_divergence"]["tensor"] == "layers.0.q_rot"
