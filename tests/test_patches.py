"""--patch files reach the processes an engine spawns (vLLM's tensor-parallel ranks), through the
workers' sitecustomize, and only those of a patched worker."""

import os
import subprocess
import sys

import pytest

from parity.pool import worker_path
from parity.worker import patches


def spawned(tmp_path, env, code="pass"):
    """A fresh interpreter on the workers' PYTHONPATH, as a spawned rank is, running ``code``: what the patch
    wrote, if it ran."""
    marker = tmp_path / "marker"
    marker.unlink(missing_ok=True)
    path = os.pathsep.join([str(worker_path(tmp_path / "cache")), str(tmp_path / "modules")])
    subprocess.run([sys.executable, "-c", code], check=True, env={**env, "PYTHONPATH": path, "MARKER": str(marker)})
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


def test_a_spawned_process_applies_the_patches_once_it_imports_their_engine(tmp_path, monkeypatch):
    """Not before: an engine spawns interpreters that never import it (torch inductor's ISA probes at vLLM's first
    two-rank forward), and each applied the patches, importing the engine for nothing."""
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "fakeengine.py").write_text("LOADED = 'fakeengine ran'\n")
    patch = tmp_path / "patch.py"
    patch.write_text("import os, pathlib, fakeengine\npathlib.Path(os.environ['MARKER']).write_text(fakeengine.LOADED)\n")
    monkeypatch.delenv(patches.ENV, raising=False)
    monkeypatch.delenv(patches.AFTER, raising=False)
    monkeypatch.setenv("MARKER", str(tmp_path / "worker-marker"))
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    patches.apply([str(patch)], after="fakeengine")
    assert os.environ[patches.AFTER] == "fakeengine"
    assert spawned(tmp_path, dict(os.environ)) is None, "applied in a process that never imports the engine"
    assert spawned(tmp_path, dict(os.environ), "import json, fakeengine") == "fakeengine ran"


def test_a_failing_patch_names_itself(tmp_path, monkeypatch):
    monkeypatch.delenv(patches.ENV, raising=False)
    bad = tmp_path / "bad.py"
    bad.write_text("raise ImportError('no such engine module')\n")
    with pytest.raises(patches.PatchFailed, match=r"patch .*bad.py failed to apply: ImportError: no such engine"):
        patches.apply([str(bad)])
    assert patches.ENV not in os.environ


RANKS_SCRIPT = r'''
import sys, tempfile
from dataclasses import asdict
from parity import checkpoint, registry
from parity.adapters.sglang import Adapter
from parity.worker import patches
from parity.worker.contract import Execution, RunRequest

adapter = Adapter()
patches.apply([sys.argv[1]])  # as the worker applies --patch
ckpt = tempfile.mkdtemp()
checkpoint.write({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_attention_heads": 2,
                  "num_key_value_heads": 2, "head_dim": 32, "hidden_size": 64, "num_hidden_layers": 1,
                  "intermediate_size": 64, "vocab_size": 256, "max_position_embeddings": 64}, 1, ckpt)
adapter.run(RunRequest(checkpoint=ckpt, prompts=[[5, 1, 4]], decode_steps=1, dtype="float32", out=ckpt + "/out",
                       modules=asdict(registry.get("llama").modules), execution=Execution(tensor_parallel=2)))
'''


@pytest.mark.parity
def test_a_patch_reaches_sglangs_tensor_parallel_ranks_once_sglang_imports_there(tmp_path):
    """SGLang's ranks are parity's own spawned processes, where SGLang imports only after prepare_cpu: the patch
    (which imports an SGLang model module, as engine patches do) runs there then, not at the interpreter's start."""
    from parity import envs
    from parity.backends import BACKENDS

    markers = tmp_path / "markers"
    markers.mkdir()
    patch = tmp_path / "patch.py"
    patch.write_text("import os, pathlib\nfrom sglang.srt.models import llama\n"
                     "(pathlib.Path(os.environ['MARKERS']) / str(os.getpid())).touch()\n")
    python = envs.ensure(BACKENDS["sglang"], "cpu")
    proc = subprocess.run([str(python), "-c", RANKS_SCRIPT, str(patch)], capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "MARKERS": str(markers),
                               "PYTHONPATH": str(worker_path(tmp_path / "cache"))})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Error in sitecustomize" not in proc.stderr, proc.stderr[-3000:]
    assert len(list(markers.iterdir())) == 3, sorted(p.name for p in markers.iterdir())  # the worker and 2 ranks
