"""The GPU smoke check's own path, run on the CPU so it keeps working where there is no GPU."""

import subprocess
import sys


def run_smoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parity.gpu_smoke", *args], capture_output=True, text=True, timeout=600)


def test_smoke_judges_every_example_and_dtype_on_the_real_reference_worker():
    proc = run_smoke("--device", "cpu", "--arch", "llama", "--arch", "gpt_j", "--examples", "2", "--seed", "3")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    verdicts = [line for line in proc.stdout.splitlines() if ": PASS " in line]
    assert len(verdicts) == 2 * 2 * 2, proc.stdout  # architectures x examples x dtypes
    assert sum("bfloat16" in line for line in verdicts) == 4
    assert proc.stdout.splitlines()[-1] == "gpu_smoke: 0 failing example/dtype pairs"


def test_unknown_architecture_is_one_line():
    proc = run_smoke("--device", "cpu", "--arch", "lama")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "lama" in proc.stderr
