"""parity pr's pure parts: reading a change (git range, diff file), refusing what overlays cannot test,
the overlay's import finder, and which families a change can affect. No engine."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parity.affected import affected
from parity.change import ChangeRefused, check_version, classify, from_diff, from_range, reversed_change
from parity.pr import write_overlay


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def engine_repo(tmp_path):
    """A toy engine repository laid out like SGLang's (package under python/), two tagged commits."""
    repo = tmp_path / "repo"
    pkg = repo / "python" / "eng"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "old.py").write_text("GONE = True\n")
    (pkg / "layers.py").write_text("SCALE = 1.0\n")
    (repo / "README.md").write_text("engine\n")
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "add", "-A")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "base")
    git(repo, "tag", "v0.5.22")
    (pkg / "layers.py").write_text("SCALE = 2.0\n")
    (pkg / "models" / "old.py").unlink()
    (pkg / "models" / "new.py").write_text("NEW = True\n")
    (repo / "README.md").write_text("engine, changed\n")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "add", "-A")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "head")
    git(repo, "tag", "v0.5.23")
    return repo


def test_range_reads_both_sides_of_each_python_file(engine_repo):
    change = from_range(engine_repo, "v0.5.22..v0.5.23", "python/eng", "0.5.23")
    files = {f.path: (f.base, f.head) for f in change.files}
    assert files == {"eng/layers.py": (b"SCALE = 1.0\n", b"SCALE = 2.0\n"),
                     "eng/models/new.py": (None, b"NEW = True\n"),
                     "eng/models/old.py": (b"GONE = True\n", None)}
    assert change.ignored == ("README.md",)
    limited = from_range(engine_repo, "v0.5.22..v0.5.23", "python/eng", "0.5.23", ["python/eng/layers.py"])
    assert [f.path for f in limited.files] == ["eng/layers.py"]


def test_range_refuses_far_versions_bad_ranges_and_compiled_sources(engine_repo):
    with pytest.raises(ChangeRefused, match="too far from the pinned build 0.8.0"):
        from_range(engine_repo, "v0.5.22..v0.5.23", "python/eng", "0.8.0")
    with pytest.raises(ChangeRefused, match="expected BASE..HEAD"):
        from_range(engine_repo, "v0.5.23", "python/eng", "0.5.23")
    with pytest.raises(ChangeRefused, match="compiled sources or build files \\(csrc/rope.cu, CMakeLists.txt\\)"):
        classify(["python/eng/layers.py", "csrc/rope.cu", "CMakeLists.txt"], "python/eng")
    check_version("v0.30.1", "0.32.0")
    with pytest.raises(ChangeRefused, match="too far"):
        check_version("v1.32.0", "0.32.0")


def test_diff_applies_forward_or_in_reverse_to_the_pinned_files(engine_repo, tmp_path):
    diff = tmp_path / "pr.diff"
    diff.write_bytes(subprocess.run(["git", "diff", "v0.5.22", "v0.5.23"], cwd=engine_repo, capture_output=True,
                                    check=True).stdout)
    old, new = tmp_path / "site-old", tmp_path / "site-new"
    for site, rev in ((old, "v0.5.22"), (new, "v0.5.23")):
        git(engine_repo, "checkout", "-q", rev)
        shutil.copytree(engine_repo / "python" / "eng", site / "eng")
    # pinned before the change: the diff is the change from it
    change = from_diff(diff, "python/eng", old, "0.5.22")
    assert {f.path: f.head for f in change.files}["eng/layers.py"] == b"SCALE = 2.0\n"
    assert "onto the pinned build" in change.source
    # pinned after it (a released change): the same diff, gated as base -> pinned
    change = from_diff(diff, "python/eng", new, "0.5.23")
    assert {f.path: (f.base, f.head) for f in change.files}["eng/layers.py"] == (b"SCALE = 1.0\n", b"SCALE = 2.0\n")
    assert reversed_change(change).files[0].base == change.files[0].head
    (new / "eng" / "layers.py").write_text("SCALE = 3.0\n")  # a far version: neither side applies
    with pytest.raises(ChangeRefused, match="applies to neither side"):
        from_diff(diff, "python/eng", new, "0.5.24")


def test_overlay_puts_changed_modules_first_and_hides_deleted_ones(engine_repo, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(engine_repo / "python" / "eng", site / "eng")  # the installed engine: the head commit
    change = reversed_change(from_range(engine_repo, "v0.5.22..v0.5.23", "python/eng", "0.5.23"))
    overlay = write_overlay(tmp_path / "overlay", change, "head")  # head of the revert: the old files
    probe = textwrap.dedent("""
        import eng.layers, eng.models.old
        print(eng.layers.SCALE, eng.models.old.GONE)
        try:
            import eng.models.new
        except ModuleNotFoundError as exc:
            print("hidden:", exc.name)
    """)
    parity_root = Path(__file__).resolve().parent.parent
    env = {"PYTHONPATH": f"{overlay}:{site}:{parity_root}", "PATH": "/usr/bin:/bin"}
    cp = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert cp.stdout.split("\n")[:2] == ["1.0 True", "hidden: eng.models.new"], cp.stderr
    plain = subprocess.run([sys.executable, "-c", "import eng.layers; print(eng.layers.SCALE)"], capture_output=True,
                           text=True, env={**env, "PYTHONPATH": f"{site}:{parity_root}"}, cwd=tmp_path)
    assert plain.stdout.strip() == "2.0"


def test_affected_families_model_files_their_helpers_and_shared_code():
    modules = {"Qwen2ForCausalLM": ["e.models.qwen2", "e.models.utils"],
               "Qwen3ForCausalLM": ["e.models.qwen3", "e.models.qwen2", "e.models.utils"],
               "LlamaForCausalLM": ["e.models.llama", "e.models.utils"]}
    families = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                "gemma": "GemmaForCausalLM"}
    assert affected(["e.models.qwen3"], modules, families) == {"qwen3": "its model module e.models.qwen3"}
    assert list(affected(["e.models.qwen2"], modules, families)) == ["qwen2", "qwen3"]
    assert affected(["e.models.deepseek"], modules, families) == {}
    assert list(affected(["e.models.utils"], modules, families)) == ["llama", "qwen2", "qwen3"]
    shared = affected(["e.layers.rotary"], modules, families)
    assert list(shared) == list(families) and shared["gemma"] == "shared code e.layers.rotary"
