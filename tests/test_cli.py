import json
import os
import re
import subprocess
import sys

import pytest

from parity.backends import BackendUsageError, parse
from parity.registry import ARCHITECTURES, UnknownArchitecture, get


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "parity", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["run", "--arch", "lama"], "Did you mean 'llama'?"),
    (["run", "--backend", "vlm"], "Did you mean 'vllm'?"),
    (["run", "--backend", "vllm=/nonexistent/python"], "does not exist"),
    (["run", "--patch", "vllm=/nonexistent.py"], "does not exist"),
    (["run", "--patch", "sglang=x.py"], "no selected backend is labelled 'sglang'"),
    (["run", "--backend", "vllm", "--backend", "vllm"], "given twice"),
    (["run", "--examples", "0"], "at least 1"),
    (["replay", "/nonexistent/report.json", "abc"], "cannot read report"),
])
def test_usage_errors_exit_2_with_one_line(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_output_directory_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("run", "--out", str(blocker / "sub"))
    assert proc.returncode == 2 and "not writable" in proc.stderr


def test_a_file_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path):
    from parity.report import write
    from synthetic_reports import example, report, result

    write(report(example("a", result("vllm"))), tmp_path, render=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("merge", str(blocker / "merged"), str(tmp_path / "report.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("parity: error: [Errno 20] Not a directory") and proc.stderr.count("\n") == 1


def test_schema_is_json_schema_of_the_report():
    proc = run_cli("schema")
    schema = json.loads(proc.stdout)
    assert schema["title"] == "Report" and "schema_version" in schema["properties"]


def test_backend_syntax():
    spec = parse(f"vllm@pr={sys.executable}")
    assert (spec.name, spec.label, spec.python, spec.patches) == ("vllm", "pr", sys.executable, ())
    plain = parse("sglang")
    assert (plain.name, plain.label, plain.python) == ("sglang", "sglang", None)
    with pytest.raises(BackendUsageError, match=re.escape("--backend 'vllm@=x': expected NAME[@LABEL][=PYTHON]")):
        parse("vllm@=x")


def test_unknown_architecture_lists_the_known_ones_and_where_to_add_one():
    with pytest.raises(UnknownArchitecture) as info:
        get("mistrall")
    assert str(info.value) == (f"unknown architecture 'mistrall'; known: {', '.join(ARCHITECTURES)} and the generic tier (parity archs). Did you mean "
                               "'mistral'? (to add one, add an entry to ARCHITECTURES in parity/registry.py)")


@pytest.mark.parametrize("env, default", [(None, "ci"), ("dev", "dev"), ("nightly", "nightly")])
def test_default_profile_is_ci_unless_parity_profile_says_otherwise(env, default):
    environ = {k: v for k, v in os.environ.items() if k != "PARITY_PROFILE"} | ({"PARITY_PROFILE": env} if env else {})
    code = "from parity import cli; print(cli.build_parser().parse_args(['run']).profile)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=60)
    assert proc.stdout.strip() == default, proc.stderr
