"""The regression gate: the rule on synthetic reports, the CLI's exit codes, and a real regression caught."""

import subprocess
import sys
from pathlib import Path

import pytest

from parity import report as report_mod
from parity import tolerance
from parity.example import Example
from parity.gate import ReportMismatch, gate, render
from synthetic_reports import FLOOR, DTYPE, error, example, report, result

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "patches"
BAND = tolerance.band(FLOOR, DTYPE)


def run_gate(baseline: Path, candidate: Path):
    return subprocess.run([sys.executable, "-m", "parity", "gate", "--baseline", str(baseline),
                           "--candidate", str(candidate)], capture_output=True, text=True, timeout=120)


def test_identical_reports_pass():
    base = report(example("a", result("vllm")), example("b", result("vllm", {"layers.1.mlp_out": 1e-2})))
    verdict = gate(base, base)
    assert not verdict.regressed and verdict.compared == 2 and not verdict.improvements
    assert "no regression (2 results compared)" in render(verdict)


def test_pass_to_diverged_names_example_backend_and_tensor():
    base = report(example("a", result("vllm"), result("sglang")))
    cand = report(example("a", result("vllm"), result("sglang", {"layers.1.mlp_out": 1e-2}),
                          description="llama(layers=2 special)"))
    verdict = gate(base, cand)
    (c,) = verdict.regressions
    assert (c.example, c.backend, c.was, c.now, c.tensor) == ("a", "sglang", "pass", "diverged", "layers.1.mlp_out")
    text = render(verdict)
    assert text.startswith("## parity gate: regression (1 of 2 results)\n")
    # One row for the regressed result; the description is the baseline's (the candidate's may differ in wording).
    (row,) = [line for line in text.splitlines() if line.startswith("| `a` ")]
    assert row == ("| `a` | llama(example a) | sglang | pass → diverged | `layers.1.mlp_out` | "
                   f"prefill, prompt 0: rel. L2 0.0e+00 → 1.0e-02 (band {BAND:.1e}) |")
    assert "layers=2 special" not in text


def test_pass_to_error_is_a_regression_with_the_reason():
    verdict = gate(report(example("a", result("vllm"))), report(example("a", error("vllm"))))
    (c,) = verdict.regressions
    assert c.tensor is None and c.detail == "EngineError: boom"


def test_a_reason_with_a_pipe_stays_in_its_table_cell():
    verdict = gate(report(example("a", result("vllm"))), report(example("a", error("vllm", "shape a|b mismatch"))))
    (row,) = [line for line in render(verdict).splitlines() if line.startswith("| `a` ")]
    assert row.endswith("| shape a\\|b mismatch |")


def test_error_growth_within_the_band_is_noise():
    base = report(example("a", result("vllm", {"layers.0.attn_out": BAND / 100})))
    cand = report(example("a", result("vllm", {"layers.0.attn_out": BAND / 2})))
    assert not gate(base, cand).regressed


@pytest.mark.parametrize("before, after, regressed", [
    (1e-3, 5e-3, False),  # already out of band, grew less than FLOOR_FACTOR
    (1e-3, 1e-3 * tolerance.FLOOR_FACTOR * 2, True),
    (1e-3, float("nan"), True),  # now non-finite
])
def test_a_diverged_tensor_regresses_when_it_grows_past_the_floor_factor(before, after, regressed):
    base = report(example("a", result("vllm", {"layers.0.q_rot": before})))
    cand = report(example("a", result("vllm", {"layers.0.q_rot": after})))
    verdict = gate(base, cand)
    assert verdict.regressed == regressed
    if regressed:
        assert verdict.regressions[0].tensor == "layers.0.q_rot"


def test_a_new_earlier_divergence_in_an_already_failing_result_is_named():
    base = report(example("a", result("vllm", {"layers.1.residual": 1e-2})))
    cand = report(example("a", result("vllm", {"layers.0.k_rot": 1e-3, "layers.1.residual": 1e-2})))
    (c,) = gate(base, cand).regressions
    assert (c.was, c.now, c.tensor) == ("diverged", "diverged", "layers.0.k_rot")


def test_improvements_alone_pass_and_are_listed():
    base = report(example("a", result("vllm", {"layers.0.q_rot": 1e-2})), example("b", error("vllm")))
    cand = report(example("a", result("vllm")), example("b", result("vllm")))
    verdict = gate(base, cand)
    assert not verdict.regressed and [c.example for c in verdict.improvements] == ["a", "b"]
    assert "2 improved" in render(verdict)


def test_examples_and_backends_on_one_side_are_listed_not_judged():
    base = report(example("a", result("vllm")), example("gone", result("vllm")))
    cand = report(example("a", result("vllm"), error("sglang")), example("new", error("vllm")))
    verdict = gate(base, cand)
    assert not verdict.regressed and verdict.compared == 1
    assert (verdict.only_baseline, verdict.only_candidate) == (["gone"], ["new"])
    assert any("sglang only in the candidate" in n for n in verdict.notes)


@pytest.mark.parametrize("field, value, message", [
    ("dtype", "bfloat16", "dtype 'float32' vs 'bfloat16'"),
    ("device", "cuda", "device 'cpu' vs 'cuda'"),
    ("profile", "ci", "profile 'dev' vs 'ci'"),
])
def test_reports_run_differently_are_refused(field, value, message):
    base = report(example("a", result("vllm")))
    cand = report(example("a", result("vllm")), **{field: value})
    with pytest.raises(ReportMismatch, match=message):
        gate(base, cand)


def test_reports_without_common_examples_are_refused():
    with pytest.raises(ReportMismatch, match="share no example"):
        gate(report(example("a", result("vllm"))), report(example("b", result("vllm"))))


def test_reports_without_common_backend_labels_are_refused():
    with pytest.raises(ReportMismatch, match="no backend label in common .*base.*pr"):
        gate(report(example("a", result("base"))), report(example("a", result("pr"))))


def test_cli_exit_codes(tmp_path):
    base = report(example("a", result("vllm")))
    runs = {"base": base, "worse": report(example("a", result("vllm", {"layers.0.q_rot": float("nan")}))),
            "bf16": report(example("a", result("vllm")), dtype="bfloat16")}
    for name, rep in runs.items():
        report_mod.write(rep, tmp_path / name)
    same = run_gate(tmp_path / "base", tmp_path / "base" / "report.json")
    assert same.returncode == 0 and "no regression" in same.stdout
    # A non-finite candidate survives the JSON round trip (NaN/Inf are written as strings).
    worse = run_gate(tmp_path / "base", tmp_path / "worse")
    assert worse.returncode == 1, worse.stderr
    assert "`a`" in worse.stdout and "`layers.0.q_rot`" in worse.stdout and "→ inf" in worse.stdout
    mismatch = run_gate(tmp_path / "base", tmp_path / "bf16")
    assert mismatch.returncode == 2 and "dtype" in mismatch.stderr and "Traceback" not in mismatch.stderr
    missing = run_gate(tmp_path / "base", tmp_path / "nowhere")
    assert missing.returncode == 2 and "cannot read report" in missing.stderr


# One fixed two-layer LLaMA with two prompts: the same example on both sides of the gate.
LLAMA = Example.from_json({
    "arch": "llama", "weight_seed": 0, "prompts": [[5, 17, 42, 7, 99, 3], [9, 1, 33]], "decode_steps": 1,
    "config": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_attention_heads": 2,
               "num_key_value_heads": 1, "head_dim": 32, "hidden_size": 64, "num_hidden_layers": 2,
               "intermediate_size": 128, "rms_norm_eps": 1e-06, "vocab_size": 256, "tie_word_embeddings": False,
               "max_position_embeddings": 256, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
})


@pytest.mark.parity
def test_gate_catches_a_patched_engine(parity_sessions):
    """Baseline: transformers as a candidate engine; candidate: the same with interleaved RoPE pairs."""
    runs = [parity_sessions(["transformers@cand"]),
            parity_sessions(["transformers@cand"], [f"cand={FIXTURES / 'hf_llama_rope_interleaved.py'}"])]
    for session in runs:
        session.evaluate(LLAMA)
        session.write(complete=True)
    baseline, candidate = (s.cfg.out / "report.json" for s in runs)
    assert (candidate.parent / "report.html").is_file()

    regressed = run_gate(baseline, candidate)
    assert regressed.returncode == 1, regressed.stdout + regressed.stderr
    line = next(l for l in regressed.stdout.splitlines() if f"`{LLAMA.id}`" in l)
    assert LLAMA.describe() in line and "| cand |" in line and "`layers.0.q_rot`" in line

    same = run_gate(baseline, baseline)
    assert same.returncode == 0 and "no regression" in same.stdout
    # The way back is an improvement, not a regression.
    back = run_gate(candidate, baseline)
    assert back.returncode == 0 and "1 improved" in back.stdout
