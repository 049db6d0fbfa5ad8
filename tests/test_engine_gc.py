"""An engine built and torn down inside a worker leaves the worker's engine import frozen, with what the first build
imported, and takes its own objects with it (no engine after the first survives its teardown, none is frozen): else
every later full collection, three in each build and teardown, scans the whole import again. vLLM's heap freeze after
a build and unfreeze at shutdown would undo the worker's freeze (``parity.adapters.vllm._own_freezing_off``); SGLang's
teardown freezes what its first build imported (``parity.adapters.sglang.Adapter.teardown``)."""

import json
import subprocess
from pathlib import Path

import pytest

from parity import envs
from parity.backends import BACKENDS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.parity

SCRIPT = r'''
import gc, importlib, json, os, sys, tempfile, weakref
from parity import checkpoint
from parity.worker.contract import RunRequest

engine = sys.argv[1]
runner = importlib.import_module(f"parity.adapters.{engine}_runner")
seen = {}


class Probe(importlib.import_module(f"parity.adapters.{engine}").Adapter):
    def load(self, request):
        loaded = super().load(request)
        seen.update(built=gc.get_freeze_count(), model=weakref.ref(runner.model(loaded)))
        return loaded


adapter = Probe()
gc.freeze()  # as the worker does after the engine import
config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_attention_heads": 2,
          "num_key_value_heads": 1, "head_dim": 64, "hidden_size": 128, "num_hidden_layers": 1,
          "intermediate_size": 96, "rms_norm_eps": 1e-6, "vocab_size": 256, "tie_word_embeddings": False,
          "max_position_embeddings": 256, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
out = []
engines = []
for seed in (1, 2, 3):
    ckpt = tempfile.mkdtemp()
    checkpoint.write(config, seed, ckpt)
    before, files = gc.get_freeze_count(), set(os.listdir(tempfile.gettempdir()))
    adapter.run(RunRequest(checkpoint=ckpt, prompts=[[3, 1, 4]], decode_steps=1, dtype="float32", out="",
                           capture=False, fresh=True))
    engines.append(seen.pop("model"))
    out.append({"frozen_before": before, "frozen_built": seen["built"], "frozen_after": gc.get_freeze_count(),
                "tracked_after": len(gc.get_objects()), "alive": sum(e() is not None for e in engines),
                "left_in_tmp": sorted(set(os.listdir(tempfile.gettempdir())) - files)})
print(json.dumps(out))
'''


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_builds_and_teardowns_keep_the_engine_import_frozen_and_leave_no_files(engine, tmp_path):
    python = envs.ensure(BACKENDS[engine], "cpu")
    proc = subprocess.run([str(python), "-c", SCRIPT, engine], capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(runs) == 3
    for i, run in enumerate(runs):
        assert run["frozen_before"] > 100_000, run  # the import, frozen
        # the engine did not freeze itself with it (frozen objects still die by reference counting: fewer is fine)
        assert run["frozen_built"] <= run["frozen_before"], run
        # the first teardown freezes what the first build imported; later ones freeze next to nothing, no garbage
        assert i == 0 or run["frozen_after"] - run["frozen_before"] < 5_000, runs
        assert run["tracked_after"] < 10_000, run  # nothing a collection would scan again
        # at most the first engine outlives its teardown (vLLM's: parity.adapters.vllm._own_freezing_off says why)
        assert run["alive"] <= 1, runs
        # SGLang's PortArgs names five IPC files an engine, never removed (parity.adapters.sglang_runner._free_port)
        assert run["left_in_tmp"] == [], run
