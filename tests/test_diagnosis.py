"""Known-issue diagnoses are tested, not just matched (parity/diagnosis.py): the pure verdicts here, the
session's as-read reference runs with fake workers in test_session.py, real SGLang in test_sglang.py."""

from dataclasses import replace

import pytest

from parity import diagnosis, known_issues
from parity.known_issues import KNOWN_ISSUES, Match
from parity.records import BackendResult, Divergence, Metrics


def _issue(arch, engine="sglang", testable=True):
    (issue,) = [i for i in KNOWN_ISSUES if (i.engine, i.arch) == (engine, arch) and i.testable == testable
                and i.kinds != ("error",)][:1]
    return Match(engine, issue.verified[-1], issue)


TESTABLE, OTHER, UNTESTABLE = _issue("llama"), _issue("qwen2"), _issue("stablelm", testable=False)


def _diverged():
    m = Metrics(rel_l2=0.2, max_abs=1.0, cosine=0.9, worst_token=0, worst_index=[0, 0], candidate_value=1.0,
                reference_value=0.0, non_finite=False)
    return BackendResult(backend="sglang", status="diverged", first_divergence=Divergence(
        tensor="layers.0.mlp_out", kind="mlp_out", layer=0, step=0, prompt=0, reason="exceeds noise floor",
        band=1e-6, **m.model_dump()))


def test_a_verdict_needs_the_engine_to_agree_with_the_checkpoint_as_it_reads_it():
    tested = []

    def agrees(issues):
        tested.append(issues)
        return None

    assert diagnosis.verdict([TESTABLE, OTHER], agrees) == diagnosis.Verdict("confirmed")
    assert tested == [[TESTABLE.issue, OTHER.issue]], "every applicable misreading at once, in table order"
    assert diagnosis.verdict([UNTESTABLE], agrees) == diagnosis.Verdict("matched")
    assert len(tested) == 1, "nothing to test: no reference run"
    refuted = diagnosis.verdict([TESTABLE], lambda issues: "still diverges at layers.0.mlp_out")
    assert refuted.status == "refuted" and "still diverges at layers.0.mlp_out" in refuted.note
    # another issue that cannot be tested may account for the rest: matched, and said so
    hedged = diagnosis.verdict([TESTABLE, UNTESTABLE], lambda issues: "still diverges")
    assert hedged.status == "matched" and "could not be confirmed" in hedged.note


def test_a_refuted_diagnosis_leaves_a_failure_with_the_reason():
    verdicts = {TESTABLE.issue: diagnosis.Verdict("refuted", "not a known sglang issue: X"),
                UNTESTABLE.issue: diagnosis.Verdict("matched")}
    refuted = diagnosis.diagnose(_diverged(), [TESTABLE], lambda m: verdicts[m.issue])
    assert refuted.known_issue is None and refuted.diagnosis is None and refuted.notes == ["not a known sglang issue: X"]
    fallback = diagnosis.diagnose(_diverged(), [TESTABLE, UNTESTABLE], lambda m: verdicts[m.issue])
    assert fallback.known_issue == UNTESTABLE.text and fallback.diagnosis == "matched"
    confirmed = diagnosis.diagnose(_diverged(), [TESTABLE], lambda m: diagnosis.Verdict("confirmed"))
    assert confirmed.known_issue == TESTABLE.text and confirmed.diagnosis == "confirmed"
    assert diagnosis.diagnose(_diverged(), [], lambda m: pytest.fail("nothing to test")).known_issue is None


def test_a_misreading_of_another_symptom_explains_a_result_only_once_confirmed():
    """A testable entry offered for a symptom it does not name (known_issues.confirmable) explains nothing by
    matching and leaves no note where its test fails: only the engine's agreement with the as-read run counts."""
    offered = replace(TESTABLE, symptom=False)
    for status in ("matched", "refuted"):
        result = diagnosis.diagnose(_diverged(), [offered], lambda m: diagnosis.Verdict(status, "a note"))
        assert result.known_issue is None and result.diagnosis is None and result.notes == [], status
    confirmed = diagnosis.diagnose(_diverged(), [offered], lambda m: diagnosis.Verdict("confirmed"))
    assert confirmed.known_issue == TESTABLE.text and confirmed.diagnosis == "confirmed"
    # an entry naming the symptom comes first, and matching it is enough there
    both = diagnosis.diagnose(_diverged(), [UNTESTABLE, offered], lambda m: diagnosis.Verdict("matched"))
    assert both.known_issue == UNTESTABLE.text


def test_rewrites_read_the_config_as_the_engine_does():
    config = {"hidden_size": 64, "num_attention_heads": 2, "head_dim": 32, "sliding_window": 4,
              "use_sliding_window": True, "layer_types": ["sliding_attention", "full_attention"],
              "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 100.0,
                                  "partial_rotary_factor": 0.5}}
    dynamic = known_issues._dynamic_at_full_length(config)["rope_parameters"]
    # SGLang's base for a sequence of max_position_embeddings x factor tokens, 16 rotated dimensions
    assert dynamic == {"rope_type": "default", "rope_theta": pytest.approx(100.0 * 3.0 ** (16 / 14)),
                       "partial_rotary_factor": 0.5}
    full = known_issues._full_attention(config)
    assert (full["sliding_window"], full["use_sliding_window"], full["layer_types"]) == (
        None, False, ["full_attention", "full_attention"])
    assert "partial_rotary_factor" not in known_issues._whole_head(config)["rope_parameters"]
    assert config["rope_parameters"]["rope_type"] == "dynamic", "rewrites copy, never mutate"


def test_sglang_rope_scaling_entries_leave_out_the_ports_that_never_scale():
    """Gemma, Gemma-2, StableLM and Mixtral on SGLang run every scaled RoPE as plain RoPE: no other scaling diagnosis
    may claim their divergences (it would be refuted, and the right one never tried)."""
    scaling = [i for i in KNOWN_ISSUES if i.engine == "sglang" and set(i.kinds) == {"q_rot", "k_rot"}]
    unscaled = [i for i in scaling if i.arch in known_issues._SGLANG_UNSCALED]
    others = [i for i in unscaled if i.reads_as is not known_issues._unscaled]
    assert len(unscaled) == len(known_issues._SGLANG_UNSCALED) + 1 and [
        (i.arch, "partial_rotary_factor" in i.diagnosis) for i in others] == [
        ("stablelm", True)], "only StableLM's partial-rotary misreading besides the plain RoPE entry"


def test_testable_means_a_prediction():
    plain = replace(TESTABLE.issue, reads_as=None, ignores=())
    assert not plain.testable and replace(plain, ignores=("x",)).testable
