"""The orchestrator without engines: judging, known issues, the search's minimal example,
resume and interrupt, with fake workers (tests/fake_worker.py) in place of real ones."""

import gc
import json
import sys
import time
from dataclasses import replace

import pytest

from parity import interrupts, judge, registry, schema
from parity.backends import parse_backends
from parity.example import Example
from parity.profiles import Profile
from parity.profiles import get as get_profile
from parity.search import run, search
from parity.session import RunConfig, Session
from parity.worker.contract import Execution
from fake_worker import activations, launcher

PROFILE = Profile("unit", max_examples=12, shrink_seconds=20)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))


def config(tmp_path, *backends, **kw):
    return RunConfig(backends=parse_backends(list(backends), []), out=tmp_path / "out", **kw)


def example(layers=2, seed=0, arch="llama", **knobs):
    return Example(arch=arch, config={"model_type": arch, "num_hidden_layers": layers, "num_attention_heads": 2,
                                      "num_key_value_heads": 1, "head_dim": 32, "hidden_size": 64, "vocab_size": 16,
                                      **knobs},
                   weight_seed=seed, prompts=((3, 1, 4), (1, 5, 9, 2)), decode_steps=2)


# -- judge: pure -----------------------------------------------------------------------------

def truth(exact, tokens=None):
    """The reference along ``tokens`` (its own greedy ones when None), floors of 1e-7."""
    return judge.Reference(exact, {k: 1e-7 for k in exact if not k.endswith(schema.TOKEN_IDS)}, tokens)


def test_judge_compares_each_backend_and_each_pair_that_fits_the_schema():
    exact = activations({"num_hidden_layers": 2}, [[3, 1, 4]], 1)
    close = {k: v if k.endswith(schema.TOKEN_IDS) else v * (1 + 1e-8) for k, v in exact.items()}
    wrong = dict(close, **{schema.key(0, 0, "layers.1.mlp_out"): close[schema.key(0, 0, "layers.1.mlp_out")] + 1})
    broken = {k: v for k, v in close.items() if "final_norm" not in k}
    outcomes = judge.judge(judge.Captures(truth(exact), {"a": close, "b": wrong, "c": broken}), "float32")
    by = {o.backends: o.result for o in outcomes}
    assert set(by) == {("a",), ("b",), ("c",), ("a", "b")}  # c broke the schema: no pair with it
    assert by[("a",)].status == "pass" and by[("a", "b")].backend == "a~b"
    d = by[("b",)].first_divergence
    assert by[("b",)].status == "diverged" and (d.tensor, d.step, d.prompt) == ("layers.1.mlp_out", 0, 0)
    assert by[("c",)].status == "error" and "final_norm" in by[("c",)].reason


def test_known_issues_may_explain_either_side_of_a_pair():
    exact = activations({"num_hidden_layers": 1}, [[3, 1]], 0)
    wrong = {k: v + (0 if k.endswith(schema.TOKEN_IDS) or "attn_out" not in k else 1) for k, v in exact.items()}
    (_, _, pair) = judge.judge(judge.Captures(truth(exact), {"v": wrong, "s": exact}), "float32")
    engines = {"v": ("vllm", "0.32.0"), "s": ("sglang", "0.5.23")}
    (found,) = judge.candidates(pair, engines, "qwen3", {"attention_bias": True}, [2])
    assert (found.engine, found.version, found.issue.arch) == ("vllm", "0.32.0", "qwen3")
    assert judge.candidates(pair, engines, "qwen3", {"attention_bias": False}, [2]) == []
    newer = {"v": ("vllm", "0.33.0"), "s": ("sglang", "0.5.23")}
    assert judge.candidates(pair, newer, "qwen3", {"attention_bias": True}, [2]) == []


# -- the session's flow -----------------------------------------------------------------------

def test_results_errors_and_known_issues_of_one_example(tmp_path):
    # SGLang's StableLM ignoring use_parallel_residual: a known issue with nothing to test, attached by matching
    launch = launcher(s={"engine": "sglang", "version": "0.5.23", "bug": lambda c: ("mlp_out", 0)},
                      v={"failure": lambda c: ("out of memory", True)})
    with Session(config(tmp_path, "sglang@s", "vllm@v"), log=lambda m: None, launch=launch) as session:
        record = session.evaluate(example(arch="stablelm", use_parallel_residual=True, hidden_act="silu"))
    by = {r.backend: r for r in record.results}
    assert list(by) == ["s", "v"]  # no pair: only one backend produced activations
    assert by["s"].status == "diverged" and by["s"].known_issue.startswith("sglang 0.5.23")
    assert by["s"].diagnosis == "matched"
    assert [r.checkpoint for r in launch.workers["reference"].runs if "as-read" in r.checkpoint] == []
    assert by["v"].status == "error" and "out of memory" in by["v"].reason and not by["v"].known_issue
    assert record.failed  # the error is not a known issue
    assert launch.workers["v"].starts == 1, "a worker that cleaned up after its error is not restarted"
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["complete"] is False and [e["id"] for e in saved["examples"]] == [record.id]


def test_a_diagnosis_the_reference_refutes_is_a_new_failure(tmp_path):
    """vLLM's qwen3 drops o_proj's bias (a known issue): the reference run without that bias must then agree
    with it. A bug with the same config and symptom that this does not explain stays a failure."""
    launch = launcher(v={"engine": "vllm", "version": "0.32.0", "bug": lambda c: ("attn_out", 0)})
    with Session(config(tmp_path, "vllm@v"), log=lambda m: None, launch=launch) as session:
        record = session.evaluate(example(arch="qwen3", attention_bias=True))
    (result,) = record.results
    as_read = [r for r in launch.workers["reference"].runs if "as-read" in r.checkpoint]
    assert sorted(r.dtype for r in as_read) == ["float32", "float64"], "the checkpoint as vLLM reads it, run once"
    assert result.status == "diverged" and result.known_issue is None and record.failed
    assert any(n.startswith("not a known vllm issue: v also diverges from the reference run on the checkpoint "
                            "as it reads it, at layers.0.attn_out") for n in result.notes), result.notes


def test_engines_that_misread_a_checkpoint_alike_share_one_run_of_the_reference_as_they_read_it(tmp_path):
    """Both engines' OLMoE ignore clip_qkv (a known issue each): one as-read reference run tests both."""
    bug = {"bug": lambda c: ("q_rot", 0)}
    launch = launcher(v={"engine": "vllm", "version": "0.32.0", **bug}, s={"engine": "sglang", "version": "0.5.23", **bug})
    with Session(config(tmp_path, "vllm@v", "sglang@s"), log=lambda m: None, launch=launch) as session:
        record = session.evaluate(example(arch="olmoe", clip_qkv=0.5))
    assert {r.backend for r in record.results if r.known_issue or r.notes} >= {"v", "s"}
    as_read = [r for r in launch.workers["reference"].runs if "as-read" in r.checkpoint]
    assert sorted(r.dtype for r in as_read) == ["float32", "float64"]


def test_an_execution_a_backend_cannot_run_is_unsupported_with_its_reason_and_reaches_those_that_can(tmp_path):
    launch = launcher(v={"unsupported_execution": {"prefix_cache": "no radix cache here"}}, s={})
    shared = Example(**{**vars(example()), "prompts": ((7, 7, 1), (7, 7, 2, 3)),
                        "execution": Execution(prefill_chunk=4, prefix_cache=True)})
    with Session(config(tmp_path, "vllm@v", "sglang@s"), log=lambda m: None, launch=launch) as session:
        record = session.evaluate(shared)
    by = {r.backend: r for r in record.results}
    assert by["v"].status == "unsupported" and "prefix_cache: no radix cache here" in by["v"].reason
    assert by["s"].status == "pass" and launch.workers["s"].runs[-1].execution == shared.execution
    assert not launch.workers["v"].runs, "nothing is sent to a backend that cannot run the example"
    assert "prefill_chunk=4 prefix_cache" in record.description
    assert Example.from_json(record.model_dump()) == shared, "the replay runs the same way"


def test_a_search_draws_only_the_execution_modes_some_selected_backend_runs(tmp_path):
    refuses = {"tensor_parallel": "one rank here", "prefix_cache": "no radix cache here"}
    launch = launcher(v={"unsupported_execution": refuses}, s={"unsupported_execution": refuses})
    every_mode = replace(PROFILE, max_examples=10, execution=replace(PROFILE.execution, plain_share=0))
    with Session(config(tmp_path, "vllm@v", "sglang@s"), log=lambda m: None, launch=launch) as session:
        assert search(session, "llama", every_mode, seed=0) is None
    drawn = [Example.from_json(r.model_dump()).execution.modes() for r in session.records.values()]
    runnable = {"chunked_prefill", "kv_block", "join_running"}  # joining where an example has two prompts
    assert len(drawn) == 10 and all(runnable - {"join_running"} <= set(m) <= runnable for m in drawn), drawn


def test_a_worker_that_could_not_clean_up_is_restarted(tmp_path):
    launch = launcher(s={"failure": lambda c: ("teardown failed", c["num_hidden_layers"] != 1)})
    with Session(config(tmp_path, "sglang@s"), log=lambda m: None, launch=launch) as session:
        session.evaluate(example(layers=2))
        assert launch.workers["s"].starts == 1
        session.evaluate(example(layers=1))
        assert launch.workers["s"].starts == 2


def test_search_shrinks_and_marks_the_minimal_example(tmp_path):
    launch = launcher(e={"bug": lambda c: ("mlp_out", 1) if c["num_hidden_layers"] >= 2 else None})
    with Session(config(tmp_path, "vllm@e"), log=lambda m: None, launch=launch) as session:
        minimal = search(session, "llama", PROFILE, seed=0)
        records = session.records
        assert minimal is not None
        assert [r.id for r in records.values() if r.minimal] == [minimal]
        record = records[minimal]
        assert record.config["num_hidden_layers"] == 2, record.description  # shrunk to the plainest witness
        (result,) = record.results
        assert result.first_divergence.tensor == "layers.1.mlp_out"
        assert any(r.role == "shrink" for r in records.values())
        session.write(complete=True)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [e["id"] for e in saved["examples"] if e["minimal"]] == [minimal]


def test_search_without_failures_finds_nothing_and_ignores_known_issues(tmp_path):
    launch = launcher(e={"engine": "sglang", "version": "0.5.23"})
    with Session(config(tmp_path, "sglang@e"), log=lambda m: None, launch=launch) as session:
        # every stablelm example with use_parallel_residual diverges, but that is SGLang 0.5.23's known bug
        launch.workers["e"].bug = lambda c: ("mlp_out", 0) if c.get("use_parallel_residual") else None
        assert search(session, "stablelm", replace(PROFILE, max_examples=6), seed=1) is None
        assert any(r.known_issue for ex in session.records.values() for r in ex.results), "the bug was drawn"
        assert not any(r.failed or r.minimal for r in session.records.values())


def test_an_engine_is_released_after_a_drawn_example_and_held_while_shrinking(tmp_path):
    launch = launcher(e={})
    with Session(config(tmp_path, "vllm@e"), log=lambda m: None, launch=launch) as session:
        session.evaluate(example(seed=1))
        assert launch.workers["e"].releases == 1
        session.evaluate(example(seed=2), role="shrink")  # the release's reply is taken before this run
        assert launch.workers["e"].releases == 1 and len(launch.workers["e"].runs) == 2


def test_a_worker_that_dies_after_its_reply_keeps_its_result_and_is_restarted_for_the_next(tmp_path):
    launch = launcher(e={"dies_after_run": True})
    with Session(config(tmp_path, "vllm@e"), log=lambda m: None, launch=launch) as session:
        first, second = session.evaluate(example(seed=1)), session.evaluate(example(seed=2))
    assert [r.status for r in first.results] == ["pass"] and [r.status for r in second.results] == ["pass"]
    assert launch.workers["e"].starts == 2 and launch.workers["e"].releases == 1


def test_an_engine_that_cannot_be_torn_down_after_an_example_fails_the_next_and_is_restarted(tmp_path):
    launch = launcher(e={"teardown_fails": True})
    with Session(config(tmp_path, "vllm@e"), log=lambda m: None, launch=launch) as session:
        first, second = session.evaluate(example(seed=1)), session.evaluate(example(seed=2))
    assert first.results[0].status == "pass" and launch.workers["e"].starts == 2
    (result,) = second.results
    assert result.status == "error" and result.reason.startswith(
        "tearing down the previous example's engine: Unusable: vllm could not be torn down"), result.reason
    assert len(launch.workers["e"].runs) == 1, "nothing is asked of the worker before it is restarted"


def test_resume_reuses_finished_examples(tmp_path):
    first, second = example(seed=1), example(seed=2)
    launch = launcher()
    with Session(config(tmp_path, "vllm@e"), log=lambda m: None, launch=launch) as session:
        session.evaluate(first)
    launch = launcher()
    with Session(config(tmp_path, "vllm@e", resume=True), log=lambda m: None, launch=launch) as session:
        assert session.known(first) is not None
        session.evaluate(first)
        assert launch.workers["e"].runs == []
        session.evaluate(second)
        assert len(launch.workers["e"].runs) == 1
        assert list(session.records) == [first.id, second.id]


def test_interrupt_keeps_finished_examples_and_marks_the_report_incomplete(tmp_path):
    def ctrl_c_on_third(request):
        if len(launch.workers["e"].runs) == 3:
            raise KeyboardInterrupt

    launch = launcher(e={"on_run": ctrl_c_on_third})
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path, "vllm@e", seed=0), ["llama"], PROFILE, launch=launch)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["complete"] is False and len(saved["examples"]) == 2


def test_an_error_that_stops_the_run_keeps_every_finished_example_though_the_report_was_written_seldom(
        tmp_path, monkeypatch):
    """report.json is rewritten only when the time since the last write is ten times what writing it cost
    (a nightly's is hundreds of MB); an error (here a full disk while a worker saves its captures) writes it."""
    from parity import session as session_mod

    writes = []

    def slow_write(report, directory, render=True):
        writes.append(len(report.examples))
        time.sleep(0.5)  # a large report: the next write waits five seconds
        write(report, directory, render=render)

    def disk_full_on_fifth(request):
        if len(launch.workers["e"].runs) == 5:
            raise OSError(28, "No space left on device")

    write = session_mod.report_mod.write
    monkeypatch.setattr(session_mod.report_mod, "write", slow_write)
    launch = launcher(e={"on_run": disk_full_on_fifth})
    with pytest.raises(OSError, match="No space"):
        run(config(tmp_path, "vllm@e", seed=0), ["llama"], PROFILE, launch=launch)
    assert writes[0] == 1 and writes[-1] == 4 and len(writes) < 4, writes
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["complete"] is False and len(saved["examples"]) == 4


@pytest.mark.parametrize("keep", [False, True])
def test_activations_are_kept_for_failing_examples_only_unless_asked(tmp_path, keep):
    launch = launcher(v={"bug": lambda c: ("mlp_out", 0) if c["num_hidden_layers"] == 2 else None})
    with Session(config(tmp_path, "vllm@v", keep_activations=keep), log=lambda m: None, launch=launch) as session:
        passing, failing = session.evaluate(example(layers=1)), session.evaluate(example(layers=2))
    assert not passing.failed and failing.failed
    kept = sorted(p.name for p in (tmp_path / "out" / "activations").iterdir())
    assert kept == sorted([failing.id, *([passing.id] if keep else [])])
    assert (tmp_path / "out" / "activations" / failing.id / "v.safetensors").exists()


def test_an_interrupt_swallowed_by_a_gc_callback_still_stops_the_run(tmp_path, monkeypatch):
    """A KeyboardInterrupt raised inside a garbage-collector callback (Hypothesis installs one) is
    dropped by the interpreter; the remembered signal stops the run at the next example."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))

    def swallowed():
        def callback(phase, info):
            gc.callbacks.remove(callback)
            interrupts._handler(2, None)  # as SIGINT would, while the collector runs the callback

        gc.callbacks.append(callback)
        gc.collect()  # "Exception ignored in garbage collector callback": the KeyboardInterrupt is gone

    def signal_on_second(request):
        if len(launch.workers["e"].runs) == 2:
            swallowed()

    launch = launcher(e={"on_run": signal_on_second})
    try:
        with pytest.raises(KeyboardInterrupt):
            run(config(tmp_path, "vllm@e", seed=0), ["llama"], PROFILE, launch=launch)
    finally:
        interrupts.handled()
    assert dropped == [KeyboardInterrupt]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["complete"] is False and len(saved["examples"]) == 2
    assert len(launch.workers["e"].runs) == 2



def test_reports_written_during_a_search_carry_the_surface_coverage(tmp_path):
    # The coverage samples the strategies; Hypothesis refuses that inside the search's own test.
    version = sorted(registry.MEASURED.glob("surface-transformers-*.json"))[-1].stem.split("-")[-1]
    launch = launcher(reference={"engine": "transformers", "version": version})
    with Session(config(tmp_path, "vllm@e"), log=lambda m: None, launch=launch) as session:
        assert search(session, "llama", replace(PROFILE, max_examples=2), seed=0) is None
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["surface"]["llama"]["transformers"] == version and saved["surface"]["llama"]["changing"] > 0


# -- decode along each backend's own tokens, and dtypes a backend cannot run ---------------------

STRAY = [[1, 9], [7, 8]]  # the reference feeds [1, 2] to both prompts: prompt 1 parts at step 1, prompt 0 at 2


def test_a_backend_whose_greedy_tokens_part_is_compared_along_them_at_every_step(tmp_path):
    launch = launcher(s={"tokens": lambda c: STRAY})
    with Session(config(tmp_path, "vllm@v", "sglang@s"), log=lambda m: None, launch=launch) as session:
        record = session.evaluate(example())
    by = {r.backend: r for r in record.results}
    assert (by["v"].status, by["v"].trajectory) == ("pass", "reference")
    assert (by["s"].status, by["s"].trajectory) == ("pass", "own")
    assert by["s"].rows and {r.verdict for r in by["s"].rows} == {"ok"}  # no step skipped
    assert "from decode step 1 prompt 1 on; the reference was teacher-forced" in by["s"].notes[0]
    forced = [(r.dtype, r.forced) for r in launch.workers["reference"].runs if r.forced]
    assert forced == [("float64", STRAY), ("float32", STRAY)]
    pair = by["v~s"]
    assert pair.trajectory == "split" and {(r.step, r.prompt) for r in pair.rows if r.verdict == "skipped"} == {
        (1, 1), (2, 0), (2, 1)}


def test_a_decode_bug_after_the_tokens_part_is_still_caught(tmp_path):
    launch = launcher(s={"tokens": lambda c: STRAY, "bug": lambda c: ("mlp_out", 0, 2)})
    with Session(config(tmp_path, "sglang@s"), log=lambda m: None, launch=launch) as session:
        (result,) = session.evaluate(example()).results
    d = result.first_divergence
    assert result.status == "diverged" and result.trajectory == "own"
    assert (d.tensor, d.step, d.prompt) == ("layers.0.mlp_out", 2, 0)


def test_the_noise_floor_follows_the_fp64_tokens_where_the_low_precision_reference_parts(tmp_path):
    launch = launcher(reference={"tokens": lambda c: STRAY})  # its float32 run takes other greedy tokens
    with Session(config(tmp_path, "sglang@s"), log=lambda m: None, launch=launch) as session:
        (result,) = session.evaluate(example()).results
    assert result.status == "pass" and result.trajectory == "reference"
    assert result.rows and max(r.floor for r in result.rows) < 1e-5  # a floor at every step, none infinite
    forced = [(r.dtype, r.forced) for r in launch.workers["reference"].runs if r.forced]
    assert forced == [("float32", [[1, 2], [1, 2]])]


def test_a_dtype_a_backend_cannot_run_is_unsupported_per_backend_with_its_reason(tmp_path):
    launch = launcher(v={"refuses": {"bfloat16": "its bf16 kernels need AVX512-BF16"}})
    report = run(config(tmp_path, "vllm@v", "sglang@s", dtype="bfloat16", seed=0), ["llama"],
                 replace(PROFILE, max_examples=2), launch=launch)
    results = [r for ex in report.examples for r in ex.results]
    assert {(r.backend, r.status) for r in results} == {("v", "unsupported"), ("s", "pass")}
    assert all("does not run bfloat16 here: its bf16 kernels need AVX512-BF16" in r.reason
               for r in results if r.backend == "v")
    assert launch.workers["v"].runs == [] and launch.workers["v"].starts == 1 and not report.summary.failing


def test_the_ci_profile_runs_fewer_examples_of_a_family_that_asks_for_fewer(tmp_path):
    ci = get_profile("ci")
    counts = {}
    for arch in ("mixtral", "llama"):
        with Session(config(tmp_path / arch, "vllm@e"), log=lambda m: None, launch=launcher()) as session:
            assert search(session, arch, ci, seed=None) is None
            counts[arch] = len(session.records)
    assert counts == {"mixtral": registry.get("mixtral").ci_examples, "llama": ci.max_examples}
