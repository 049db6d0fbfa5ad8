"""parity repro: a bundle runs in the engine's own environment with parity not importable and shows
the divergence parity found (SGLang's GPT-J drops lm_head's bias), and only where there is one."""

import json
import os
import re
import subprocess

import pytest

from parity import report as report_mod
from parity.cli import main

pytestmark = pytest.mark.parity


def _bundle_run(bundle, python, cwd):
    # -I: no PYTHONPATH, no user site, no script-relative surprises; cwd outside the repo.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    cp = subprocess.run([python, "-I", str(bundle / "run.py")], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600)
    return cp.returncode, cp.stdout


def test_bundle_shows_the_divergence_without_parity(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--arch", "gpt_j", "--backend", "vllm", "--backend", "sglang", "--examples", "1",
                 "--out", str(out)]) == 0  # SGLang's divergence is a known issue: the run does not fail
    report = report_mod.read(out)
    (example,) = report.examples
    found = {r.backend: r for r in example.results}
    assert found["sglang"].first_divergence.tensor == "logits" and found["vllm"].status == "pass"
    pythons = {b.label: b.python for b in report.backends}
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    for label in ("sglang", "vllm"):
        assert main(["repro", str(out), example.id, "--backend", label, "--out", str(tmp_path / label)]) == 0
        bundle = tmp_path / label
        assert json.loads((bundle / "config.json").read_text()) == example.config
        # parity must not be importable from the engine's environment itself, or the test proves nothing
        assert subprocess.run([pythons[label], "-I", "-c", "import parity"], cwd=cwd,
                              capture_output=True).returncode != 0

    code, text = _bundle_run(tmp_path / "sglang", pythons["sglang"], cwd)
    assert code == 1, text
    m = re.search(r"first divergence: (\S+) \(prompt 0: rel. L2 (\S+),", text)
    assert m and m[1] == "logits", text
    assert float(m[2]) == pytest.approx(found["sglang"].first_divergence.rel_l2, rel=1e-3)
    assert re.search(r"layers\.0 +0 +\S+ +\S+ +ok", text)

    code, text = _bundle_run(tmp_path / "vllm", pythons["vllm"], cwd)
    assert code == 0 and "no divergence" in text, text


def test_repro_refuses_unknown_example_and_backend(tmp_path, capsys):
    from synthetic_reports import example, report, result

    report_mod.write(report(example("a1", result("vllm"))), tmp_path, render=False)
    assert main(["repro", str(tmp_path), "nope", "--backend", "vllm"]) == 2
    assert "no example 'nope'" in capsys.readouterr().err
    assert main(["repro", str(tmp_path), "a1", "--backend", "sglang"]) == 2
    assert "no backend labelled 'sglang'" in capsys.readouterr().err
