"""Faults and bad input against real workers: crashes, hangs, NaN, damaged
checkpoints, broken patches, missing engines, interrupts. The backend under
test is a transformers worker with a fault patch (fast to start), judged
against the clean reference."""

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from parity import checkpoint_cache, envs
from parity.backends import BACKENDS
from parity.example import Example

FAULTS = Path(__file__).resolve().parent.parent / "fixtures" / "faults"
pytestmark = pytest.mark.parity


def example(vocab=256, layers=2, seed=0, prompts=((3, 1, 4), (1, 5, 9, 2))):
    return Example(
        arch="llama",
        config={"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_attention_heads": 2,
                "num_key_value_heads": 1, "head_dim": 32, "hidden_size": 64, "num_hidden_layers": layers,
                "intermediate_size": 96, "rms_norm_eps": 1e-6, "vocab_size": vocab, "tie_word_embeddings": False,
                "max_position_embeddings": 256, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
        weight_seed=seed, prompts=prompts, decode_steps=2)


def faulty(parity_sessions, fault, **kw):
    return parity_sessions(["transformers@faulty"], [f"faulty={FAULTS / fault}"], **kw)


def test_crashed_worker_is_an_error_with_its_log_and_is_restarted(parity_sessions):
    session = faulty(parity_sessions, "crash.py")
    (result,) = session.evaluate(example(vocab=1000)).results
    assert result.status == "error" and "worker died (signal SIGKILL)" in result.reason
    (after,) = session.evaluate(example()).results
    assert after.status == "pass"


def test_hung_worker_times_out_and_is_restarted(parity_sessions):
    session = faulty(parity_sessions, "hang.py", timeout=20.0)
    t0 = time.monotonic()
    (result,) = session.evaluate(example(vocab=1000)).results
    assert result.status == "error" and "timed out after 20s" in result.reason
    assert time.monotonic() - t0 < 60
    (after,) = session.evaluate(example()).results
    assert after.status == "pass"


def test_nan_in_activations_is_a_non_finite_divergence(parity_sessions):
    session = faulty(parity_sessions, "nan_mlp.py")
    (result,) = session.evaluate(example(layers=2)).results
    d = result.first_divergence
    assert result.status == "diverged" and d.reason == "non-finite"
    assert (d.tensor, d.step) == ("layers.1.mlp_out", 0)


def test_truncated_cached_checkpoint_is_rebuilt(parity_sessions):
    session = parity_sessions(["transformers@clean"])
    ex = example(seed=7)
    session.evaluate(ex)
    weights = session.cache / "checkpoints" / ex.checkpoint_id / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    again = replace(ex, prompts=((2, 7, 1), (8, 2, 8, 1)))  # same checkpoint, new example
    (result,) = session.evaluate(again).results
    checkpoint_cache.validate(weights.parent)  # whole again: header and data sizes agree
    assert result.status == "pass", result.reason


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "parity", *args], capture_output=True, text=True, timeout=600, **kw)


def test_patch_that_does_not_import_is_a_one_line_usage_error(tmp_path):
    args = ["run", "--arch", "llama", "--backend", "transformers@x", "--patch", f"x={FAULTS / 'broken_import.py'}",
            "--profile", "dev", "--out", str(tmp_path)]
    proc = run_cli(*args)
    assert proc.returncode == 2
    (error,) = [line for line in proc.stderr.splitlines() if not line.startswith("parity:  ")
                and not line.startswith("parity: starting")]
    assert error.startswith("parity: error: x: patch ") and "broken_import.py failed to apply: ModuleNotFoundError" in error
    assert "Traceback" not in proc.stderr
    verbose = run_cli(*args, "--verbose")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr and "NoSuchClassInThisVersion" in verbose.stderr


def test_interpreter_without_the_engine_is_a_usage_error(tmp_path):
    python = envs.ensure(BACKENDS["transformers"], "cpu")
    proc = run_cli("run", "--backend", f"vllm={python}", "--profile", "dev", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "cannot import its engine" in proc.stderr and "Traceback" not in proc.stderr.splitlines()[0]


def test_interrupt_keeps_finished_examples_leaves_no_workers_and_resumes(tmp_path):
    args = ["run", "--arch", "llama", "--backend", "transformers@x", "--examples", "40", "--profile", "dev",
            "--seed", "3", "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "parity", *args], stderr=subprocess.PIPE, text=True)
    report = tmp_path / "report.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (report.exists() and len(json.loads(report.read_text())["examples"]) >= 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    data = json.loads(report.read_text())
    assert data["complete"] is False and len(data["examples"]) >= 2
    pids = [int(p) for log in (tmp_path / "logs").glob("*.log") for p in re.findall(r"=== pid (\d+)", log.read_text())]
    assert len(pids) >= 2
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid

    done = {e["id"] for e in data["examples"]}
    resumed = run_cli(*[a if a != "40" else "3" for a in args], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(done)} finished examples" in resumed.stderr
    assert done <= {e["id"] for e in json.loads(report.read_text())["examples"]}


def test_a_capture_failing_inside_vllms_forward_leaves_the_worker_serving(parity_sessions):
    """The failed engine is torn down before the next builds (measured: without that, vLLM's next load
    failed with "pipeline model parallel group is not initialized")."""
    session = parity_sessions(["vllm@capfail"], [f"capfail={FAULTS / 'vllm_capture_fails_mid_forward.py'}"])
    worker = session.workers["capfail"]
    pid = worker.capabilities.pid
    (failed,) = session.evaluate(example(vocab=1000, seed=31)).results
    assert failed.status == "error" and "injected: no prompt claims this token" in failed.reason
    (after,) = session.evaluate(example(seed=31)).results
    assert after.status == "pass", after.reason
    assert worker.capabilities.pid == pid, "served on by the same worker, not a restarted one"
