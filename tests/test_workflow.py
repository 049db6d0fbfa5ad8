"""docs/ci-template.yml, run as its jobs' commands (not GitHub itself): two shard jobs, each a separate
process tree in its own workspace with the real vLLM engine, upload their reports; the gate job downloads,
merges and gates them. GitHub's own actions are stood in for (checkout: a clone of an engine repository;
artifacts: a directory), and so are the steps that install parity (this checkout's) or call GitHub's API."""

import fnmatch
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from parity import envs
from parity.backends import BACKENDS
from parity.pr import installed
from parity.report import read

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "docs" / "ci-template.yml"
UPSTREAM = ROOT / "fixtures" / "upstream" / "vllm-0.29.0-0.30.0-yarn.diff"
pytestmark = pytest.mark.parity


def _expr(text, context):
    def value(m):
        key = m[1].strip()
        if key not in context:
            raise AssertionError(f"the workflow uses ${{{{ {key} }}}}, which this test does not provide")
        return str(context[key])

    return re.sub(r"\$\{\{(.+?)\}\}", value, text)


def _condition(text, context):
    if text is None:
        return True  # GitHub's default, success(): an earlier failure stops the job here (see _run_job)
    expr = re.sub(r"steps\.(\w+)\.outputs\.(\w+)", lambda m: repr(context.get(f"steps.{m[1]}.outputs.{m[2]}", "")),
                  text.replace("always()", "True").replace("&&", " and "))
    return eval(expr, {})  # noqa: S307 - the workflow's own conditions, on this test's values


def _run_job(job, workspace, context, artifacts, engine_repo, overrides):
    workspace.mkdir(parents=True)
    env = {**os.environ, **{k: _expr(str(v), context) for k, v in context["workflow_env"].items()}, **overrides}
    ran = []
    for step in job["steps"]:
        name = step.get("name") or step.get("uses")
        if not _condition(step.get("if"), context):
            continue
        with_ = {k: _expr(str(v), context) for k, v in (step.get("with") or {}).items()}
        uses = step.get("uses", "")
        if uses.startswith("actions/checkout"):
            subprocess.run(["git", "clone", "-q", str(engine_repo), str(workspace / with_["path"])], check=True)
        elif uses.startswith(("actions/setup-python", "actions/cache")):
            pass  # this interpreter; the engine environments are already built (PARITY_CACHE_DIR)
        elif uses.startswith("actions/upload-artifact"):
            files = [f for pattern in with_["path"].split() for hit in glob.glob(str(workspace / pattern))
                     for f in ([Path(hit)] if Path(hit).is_file() else Path(hit).rglob("*")) if f.is_file()]
            # As upload-artifact does: paths kept relative to the least common ancestor of what was found.
            root = Path(os.path.commonpath([f.parent for f in files])) if files else workspace
            for f in files:
                (artifacts / with_["name"] / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, artifacts / with_["name"] / f.relative_to(root))
        elif uses.startswith("actions/download-artifact"):
            for art in sorted(artifacts.iterdir()):
                if fnmatch.fnmatch(art.name, with_["pattern"]):
                    shutil.copytree(art, workspace / with_["path"] / art.name)
        elif step.get("id") == "install" or "GH_TOKEN" in (step.get("env") or {}):
            continue  # this checkout's parity is installed already; GitHub's API is not here
        else:
            output = workspace / f".github-output-{len(ran)}"
            output.touch()
            step_env = {**env, **{k: _expr(str(v), context) for k, v in (step.get("env") or {}).items()},
                        "GITHUB_OUTPUT": str(output)}
            cp = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", _expr(step["run"], context)],
                                cwd=workspace, env=step_env, capture_output=True, text=True, timeout=900)
            for line in output.read_text().splitlines():
                key, _, val = line.partition("=")
                context[f"steps.{step.get('id')}.outputs.{key}"] = val
            assert cp.returncode == 0, f"step {name!r} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}"
        ran.append(name)
    return ran


def _engine_repo(path):
    """A vLLM repository whose PR reverts the YaRN change of 0.30.0 (the rotary files of the pinned 0.32.0)."""
    python = envs.ensure(BACKENDS["vllm"], "cpu", print)
    site, version = installed(str(python), "vllm")
    rope = "vllm/model_executor/layers/rotary_embedding"
    shutil.copytree(site / rope, path / rope, ignore=shutil.ignore_patterns("__pycache__"))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "base"], ["tag", f"v{version}"],
                 ["apply", "-R", str(UPSTREAM)], ["add", "-A"], ["commit", "-qm", "revert the YaRN fix"]):
        subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", *args], cwd=path, check=True,
                       capture_output=True)
    return f"v{version}", subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                                         check=True).stdout.strip()


def test_two_shards_merged_then_gated(tmp_path):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    base, head = _engine_repo(tmp_path / "engine-repo")
    context = {"github.workspace": None, "github.event.pull_request.base.sha": base,
               "github.event.pull_request.head.sha": head, "github.event.pull_request.number": 1,
               "github.token": "-", "github.server_url": "https://github.com", "github.repository": "o/vllm",
               "github.run_id": 1, "runner.os": "Linux", "workflow_env": workflow["env"]}
    context.update({f"env.{k}": v for k, v in workflow["env"].items() if "${{" not in str(v)})
    overrides = {"PARITY": str(Path(sys.executable).parent / "parity"), "PARITY_CACHE_DIR": str(envs.cache_dir()),
                 "PARITY_ARGS": "--profile ci --examples 1"}  # tiny: one example per shard
    artifacts = tmp_path / "artifacts"
    assert workflow["jobs"]["gate"]["needs"] == "shard"
    for arch in ("llama", "qwen2"):  # two of the matrix's shards, each a separate process tree and workspace
        assert arch in workflow["jobs"]["shard"]["strategy"]["matrix"]["arch"]
        ws = tmp_path / f"shard-{arch}"
        _run_job(workflow["jobs"]["shard"], ws, {**context, "github.workspace": ws, "matrix.arch": arch},
                 artifacts, tmp_path / "engine-repo", overrides)
    assert sorted(p.name for p in artifacts.iterdir()) == ["parity-shard-llama", "parity-shard-qwen2"]
    assert (artifacts / "parity-shard-llama" / "candidate" / "report.json").is_file()

    ws = tmp_path / "gate"
    gate_context = {**context, "github.workspace": ws}
    ran = _run_job(workflow["jobs"]["gate"], ws, gate_context, artifacts, None, overrides)
    assert "Fail on a regression (1) or unusable reports (2)" not in ran
    assert gate_context["steps.gate.outputs.code"] == "0"
    baseline, candidate = read(ws / "merged" / "baseline"), read(ws / "merged" / "candidate")
    assert sorted(ex.arch for ex in baseline.examples) == ["llama", "qwen2"]
    assert [ex.id for ex in candidate.examples] == [ex.id for ex in baseline.examples]
    assert "no regression (2 results compared)" in (ws / "gate.md").read_text()
    assert (artifacts / "parity-merged" / "merged" / "candidate" / "report.html").is_file()
