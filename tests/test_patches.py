"""--patch files reach the processes an engine spawns (vLLM's tensor-parallel ranks), through the
workers' sitecustomize, and only those of a patched worker."""

import os
import subprocess
import sys

import pytest

from parity.pool import worker_path
from parity.worker import patches


def spawned(tmp_path, env):
    """A fresh interpreter on the workers' PYTHONPATH, as a spawned rank is: what the patch wrote, if it ran."""
    marker = tmp_path / "marker"
    marker.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-c", "pass"], check=True,
                   env={**env, "PYTHONPATH": str(worker_path(tmp_path / "cache")), "MARKER": str(marker)})
    return marker.read_text() if marker.exists() else None


def test_a_patch_applied_in_the_worker_is_applied_again_in_every_process_it_spawns(tmp_path, monkeypatch):
    patch = tmp_path / "patch.py"
    patch.write_text("import os, pathlib\npathlib.Path(os.environ['MARKER']).write_text(f'applied in {os.getpid()}')\n")
    monkeypatch.delenv(patches.ENV, raising=False)
    monkeypatch.setenv("MARKER", str(tmp_path / "worker-marker"))
    assert spawned(tmp_path, dict(os.environ)) is None, "an unpatched worker's children are left alone"
    patches.apply([str(patch)])
    assert (tmp_path / "worker-marker").exists() and os.environ[patches.ENV] == str(patch)
    assert spawned(tmp_path, dict(os.environ)).startswith("applied in ")


def test_a_failing_patch_names_itself(tmp_path, monkeypatch):
    monkeypatch.delenv(patches.ENV, raising=False)
    bad = tmp_path / "bad.py"
    bad.write_text("raise ImportError('no such engine module')\n")
    with pytest.raises(patches.PatchFailed, match=r"patch .*bad.py failed to apply: ImportError: no such engine"):
        patches.apply([str(bad)])
    assert patches.ENV not in os.environ
