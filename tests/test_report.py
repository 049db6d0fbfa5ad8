"""The report without engines: summary and coverage, merge, the JSON round trip, what is
rendered when, and known engine issues shown apart from new failures."""

import pytest
from pydantic import ValidationError
from synthetic_reports import error, example, report, result

import parity
from parity import html, markdown
from parity import report as report_mod
from parity.example import Example
from parity.records import Report, Summary
from parity.registry import ArchSpec
from parity.summary import coverage, merge, summarize

GEMMA_BUG = "sglang 0.5.23: SGLang GemmaMLP hard-codes exact GELU"


def known(backend: str, diagnosis: str = GEMMA_BUG, load_error: bool = False):
    """A result that a known engine issue explains: a divergence at layer 0's MLP, or an error."""
    r = error(backend) if load_error else result(backend, {"layers.0.mlp_out": 1e-2})
    return r.model_copy(update={"known_issue": diagnosis, "diagnosis": "matched" if load_error else "confirmed"})


def test_coverage_counts_the_knob_values_each_family_draws():
    a = example("a", result("vllm"))
    b = example("b", result("vllm")).model_copy(update={"config": {
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "hidden_size": 64,
        "rope_parameters": {"rope_type": "linear", "factor": 2.0}, "attention_bias": True, "sliding_window": 4}})
    cov = coverage([a, b])["llama"]
    assert cov["layers"] == {"2": 1, "3": 1}
    assert cov["gqa_group"] == {"2": 1} and cov["head_dim_decoupled"] == {"True": 1}
    assert cov["rope_type"] == {"default": 1, "linear": 1} and cov["attention_bias"] == {"True": 1}
    assert "sliding_window" not in cov  # not a knob of llama's registry entry
    assert "attention_bias" not in coverage([a])["llama"]  # never set: not claimed as covered
    mistral = b.model_copy(update={"id": "m", "arch": "mistral"})
    assert coverage([mistral])["mistral"]["sliding_window"] == {"4": 1}
    assert "attention_bias" not in coverage([mistral])["mistral"]


def test_a_knob_added_to_an_entry_is_described_and_covered_without_other_edits(monkeypatch):
    toy = ArchSpec(model_type="llama", architecture="LlamaForCausalLM", knobs={"toy_gate": (False, True)})
    monkeypatch.setattr("parity.registry.ARCHITECTURES", {"toy": toy})
    config = {"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
              "hidden_size": 64, "toy_gate": True}
    ex = Example("toy", config, 0, ((1, 2),), 0)
    assert ex.describe() == "toy(layers=1 heads=2/1 head_dim=32 hidden=64 toy_gate=True prompt_lens=2)"
    rec = example("t", result("vllm")).model_copy(update={"arch": "toy", "config": config})
    assert coverage([rec])["toy"]["toy_gate"] == {"True": 1}


def test_describe_names_family_knobs_under_parity_names():
    gptj = Example("gpt_j", {"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                             "head_dim": 32, "hidden_size": 64, "rotary_dim": 16}, 0, ((1, 2, 3),), 0)
    assert gptj.describe() == "gpt_j(layers=1 heads=2/2 head_dim=32 hidden=64 partial_rotary_factor=0.5 prompt_lens=3)"
    stablelm = Example("stablelm", {"num_hidden_layers": 2, "num_attention_heads": 1, "num_key_value_heads": 1,
                                    "head_dim": 32, "hidden_size": 32, "use_qkv_bias": False, "qk_layernorm": True,
                                    "use_parallel_residual": True}, 0, ((1,),), 0)
    assert stablelm.describe().endswith("hidden=32 qk_layernorm=True use_parallel_residual=True prompt_lens=1)")
    # RoPE per layer type: each setting names the layer type it is of
    rope = {"full_attention": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5},
            "sliding_attention": {"rope_type": "default", "partial_rotary_factor": 0.25}}
    gemma3 = Example("gemma3_text", {"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                     "head_dim": 32, "hidden_size": 64, "rope_parameters": rope}, 0, ((1,),), 0)
    assert ("partial_rotary_factor=0.5@full_attention rope=linear@full_attention "
            "partial_rotary_factor=0.25@sliding_attention prompt_lens=1)") in gemma3.describe()


def test_summary_counts_statuses_and_known_issues_per_backend_and_arch():
    examples = [example("a", result("vllm"), known("sglang")),
                example("b", result("vllm", {"layers.0.q_rot": 1e-2}), known("sglang", load_error=True)),
                example("c", error("vllm"), result("sglang", {"layers.1.attn_out": 1e-2}))]
    s = summarize(examples)
    assert s.by_backend == {"vllm": {"pass": 1, "diverged": 1, "error": 1}, "sglang": {"diverged": 2, "error": 1}}
    assert s.known_by_backend == {"sglang": {"diverged": 1, "error": 1}}
    assert s.by_arch == {"llama": {"pass": 1, "diverged": 3, "error": 2}}
    assert s.known_by_arch == {"llama": {"diverged": 1, "error": 1}}
    assert s.failing == ["b", "c"]  # a: only a known issue


def test_summary_refuses_more_known_issues_than_results():
    with pytest.raises(ValidationError, match="2 known diverged results of sglang exceed"):
        Summary(examples=1, by_backend={"sglang": {"diverged": 1}}, by_arch={}, max_rel_l2={}, failing=[],
                known_by_backend={"sglang": {"diverged": 2}})


def test_merge_keeps_every_example_once_and_recounts():
    r1 = report(example("a", result("vllm")), example("b", result("vllm", {"layers.0.q_rot": 1.0})))
    r2 = report(example("b", result("vllm", {"layers.0.q_rot": 1.0})), example("c", known("vllm")),
                complete=False)
    merged = merge([r1, r2], command="merged")
    assert [ex.id for ex in merged.examples] == ["a", "b", "c"]
    assert merged.summary.examples == 3 and merged.summary.failing == ["b"]
    assert merged.summary.known_by_backend == {"vllm": {"diverged": 1}}
    assert merged.command == "merged" and not merged.complete


def test_merge_refuses_reports_of_other_settings():
    with pytest.raises(ValueError, match="cannot merge"):
        merge([report(example("a", result("vllm"))), report(example("b", result("vllm")), dtype="bfloat16")], "m")
    with pytest.raises(ValueError, match="nothing to merge"):
        merge([], "m")


def test_json_round_trip_and_render_only_when_asked(tmp_path):
    rep = report(example("a", result("vllm"), known("sglang")), example("b", result("vllm", {"layers.0.q_rot": 1e-2})))
    report_mod.write(rep, tmp_path, render=False)
    assert {p.name for p in tmp_path.iterdir()} == {"report.json"}
    assert report_mod.read(tmp_path) == rep
    report_mod.write(rep, tmp_path, render=True)
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "report.html"}
    frame = parity.load_report(tmp_path / "report.json")
    assert set(frame["example"]) == {"a", "b"} and set(frame["backend"]) == {"vllm", "sglang"}


def test_a_report_written_before_the_known_counts_still_reads(tmp_path):
    rep = report(example("a", known("sglang")))
    data = rep.model_dump_json(exclude={"summary": {"known_by_backend", "known_by_arch"}})
    (tmp_path / "report.json").write_text(data)
    assert report_mod.read(tmp_path).summary.known_by_backend == {}


def green_run_with_known_issues():
    """A run whose only divergences and errors are known engine issues, as `nox -s parity` is."""
    return report(example("a", result("vllm"), known("sglang"), known("vllm~sglang")),
                  example("b", result("vllm"), known("sglang", "sglang 0.5.23: no q/k norms", load_error=True)),
                  example("c", result("vllm"), result("sglang")))


def test_markdown_shows_known_issues_apart_from_failures():
    text = markdown.render(green_run_with_known_issues())
    assert text.startswith("## parity: no failure in 3 examples (2 known engine issues)\n")
    lines = text.splitlines()
    assert "| backend | pass | diverged | error | known issue | unsupported | max rel. L2 (passing) |" in lines
    assert next(l for l in lines if l.startswith("| sglang |")).startswith("| sglang | 1 |  |  | 2 |  |")
    assert next(l for l in lines if l.startswith("| vllm~sglang |")).startswith("| vllm~sglang |  |  |  | 1 |  |")
    assert "Architectures: llama 4 pass, 3 known issue" in lines
    assert f"- llama on sglang, vllm~sglang (2 results, all confirmed): {GEMMA_BUG}" in lines
    assert "- llama on sglang (1 result, matched, nothing to test): sglang 0.5.23: no q/k norms" in lines
    assert "first divergence" not in text  # no failure table


def test_markdown_failure_table_leaves_known_issues_out():
    text = markdown.render(report(example("a", result("vllm", {"layers.0.q_rot": 1e-2}), known("sglang"))))
    assert text.startswith("## parity: 1 of 1 examples fail\n")
    rows = [l for l in text.splitlines() if l.startswith("| llama(example a)")]
    assert len(rows) == 1 and "| vllm |" in rows[0]


def test_html_gives_known_issues_their_own_badge_column_and_diagnosis():
    page = html.render(green_run_with_known_issues())
    assert "st-diverged" not in page.split("<style>")[0] + page.split("</style>")[1]
    assert page.count('<span class="st st-known-issue" title="diverged: ') == 2 * 3  # index table + example summary
    assert '<span class="st st-known-issue" title="error: sglang 0.5.23: no q/k norms">known issue</span>' in page
    assert '<p class="verdict">no failure in 3 examples (2 known engine issues)</p>' in page
    summary = page.split("<h2>Summary</h2>")[1].split("</table>")[0]
    assert "<th>known issue</th>" in summary
    assert ('<td>backend</td><td>sglang</td><td class="n">1</td><td class="n">0</td><td class="n">0</td>'
            '<td class="n">2</td><td class="n">0</td>') in summary
    # The diagnosis, one click away: in a closed <details> under the result and in the list of known issues.
    assert (f'<details class="known"><summary>known engine issue: diverged, not failing the run, confirmed: the '
            f'engine agrees with the reference on the checkpoint as the issue says it reads it</summary>'
            f"<p>{GEMMA_BUG}</p></details>") in page
    assert (f"<li><details><summary>llama on sglang, vllm~sglang (2 results, all confirmed)</summary>"
            f"<p>{GEMMA_BUG}</p>") in page
    assert 'id="ex-a" open' not in page and 'id="ex-b" open' not in page


def test_the_decode_trajectory_of_each_result_is_shown_in_markdown_and_html():
    own = result("sglang").model_copy(update={"trajectory": "own"})
    same = result("vllm").model_copy(update={"trajectory": "reference"})
    pair = result("vllm~sglang").model_copy(update={"trajectory": "split"})
    rep = report(example("a", same, own, pair).model_copy(update={"decode_steps": 2}))
    line = ("Decode steps: 1 results compared along the backend's own greedy tokens (they differ from the reference's; "
            "the reference was teacher-forced along them), 1 engine pairs whose tokens part (steps after that not "
            "compared between them)")
    assert line in markdown.render(rep).splitlines()
    page = html.render(rep)
    assert "<p>" + line.replace("'", "&#x27;") + ".</p>" in page
    assert "<p>Decode steps compared along its own greedy tokens, which differ from the reference&#x27;s" in page
    assert "<p>Decode steps compared along the reference&#x27;s own greedy tokens.</p>" in page
    assert "Decode steps:" not in markdown.render(report(example("b", same)))
    assert "trajectory" in Report.model_json_schema()["$defs"]["BackendResult"]["properties"]


def test_merge_takes_shards_from_other_machines_and_refuses_other_engines_or_reference():
    def shard(ex_id, python="/m1/bin/python", vllm="0.32.0", reference="5.19.0"):
        r = report(example(ex_id, result("vllm")))
        return r.model_copy(update={
            "backends": [b.model_copy(update={"python": python, "versions": {"vllm": vllm}}) for b in r.backends],
            "reference": r.reference.model_copy(update={"versions": {"transformers": reference}})})

    merged = merge([shard("a"), shard("b", python="/m2/venv/bin/python")], "m")
    assert [ex.id for ex in merged.examples] == ["a", "b"]
    with pytest.raises(ValueError, match=r"report 2: different backends .*0\.31\.0"):
        merge([shard("a"), shard("b", vllm="0.31.0")], "m")
    with pytest.raises(ValueError, match=r"report 2: different reference .*5\.18\.0"):
        merge([shard("a"), shard("b", reference="5.18.0")], "m")
    with pytest.raises(ValueError, match="different profile 'dev' vs 'ci'"):
        merge([shard("a"), shard("b").model_copy(update={"profile": "ci"})], "m")


def test_merge_command_writes_the_merged_report_and_refuses_in_one_line(tmp_path, capsys):
    from parity.cli import main

    report_mod.write(report(example("a", result("vllm"))), tmp_path / "s1", render=False)
    report_mod.write(report(example("b", result("vllm", {"layers.0.q_rot": 1.0}))), tmp_path / "s2", render=False)
    report_mod.write(report(example("c", result("vllm")), device="cuda"), tmp_path / "s3", render=False)
    assert main(["merge", str(tmp_path / "all"), str(tmp_path / "s1"), str(tmp_path / "s2" / "report.json")]) == 0
    merged = report_mod.read(tmp_path / "all")
    assert [ex.id for ex in merged.examples] == ["a", "b"] and merged.summary.failing == ["b"]
    assert (tmp_path / "all" / "report.md").is_file()
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "bad"), str(tmp_path / "s1"), str(tmp_path / "s3")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "different device 'cpu' vs 'cuda'" in err
    assert not (tmp_path / "bad").exists()


def test_markdown_counts_the_engine_loads_reused_per_backend():
    def loaded(backend, reused):
        return result(backend).model_copy(update={"seconds": {"load": 0.1, "forward": 0.01}, "reused": reused})

    rep = report(example("a", loaded("vllm", False), loaded("sglang", False)),
                 example("b", loaded("vllm", True), loaded("sglang", False)),
                 example("c", loaded("vllm", True), error("sglang")))
    line = ("Engines reused (weights reloaded into the engine of the previous example, same structure): "
            "vllm 2 of 3 loads; sglang 0 of 2 loads")
    assert line in markdown.render(rep).splitlines()
    assert "Engines reused" not in markdown.render(report(example("d", result("vllm"))))  # no load reported
