"""The adapter skeleton inside a real worker environment (torch): teardown follows every
failure, a failed load included, and only a failing teardown makes the worker unusable; an engine
held between requests of one structure is reloaded, not rebuilt, and never served after a failed reload."""

import json
import subprocess
from pathlib import Path

import pytest

from parity import envs
from parity.backends import BACKENDS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.parity

SCRIPT = r'''
import dataclasses, json, sys, time
from parity.adapters.base import EngineAdapter, Unusable
from parity.worker.contract import RunRequest

class Engine(EngineAdapter):
    engine = "fake"

    def __init__(self, fail_in, stuck=False, held=False, slow_teardown=0.0):
        super().__init__()
        self.fail_in, self.stuck, self.held, self.slow_teardown, self.calls = fail_in, stuck, held, slow_teardown, []

    def versions(self): return {"fake": "1"}
    def architectures(self): return []

    def _step(self, name, value=None):
        self.calls.append(name)
        if name == self.fail_in:
            raise RuntimeError(f"{name} refused")
        return value

    def load(self, request): return self._step("load", "model")
    def structure(self, request): return request.dtype if self.held else None
    def reload(self, loaded, request): self._step("reload")
    def hook(self, loaded, rec, modules): raise AssertionError("capture is off")
    def generate(self, loaded, rec, request): self._step("generate")

    def teardown(self, loaded):
        self.calls.append(f"teardown({loaded})")
        time.sleep(self.slow_teardown)
        if self.stuck:
            raise OSError("stuck")

request = RunRequest(checkpoint="/nonexistent", prompts=[[1, 2]], decode_steps=1, dtype="float32", out="",
                     capture=False)
out = {}
for case, engine in {"load": Engine("load"), "generate": Engine("generate"), "none": Engine(None),
                     "stuck": Engine("load", stuck=True)}.items():
    try:
        reply = engine.run(request)
        result = sorted(reply.seconds)
    except Unusable as exc:
        result = f"Unusable: {exc}"
    except RuntimeError as exc:
        result = f"RuntimeError: {exc}"
    out[case] = [engine.calls, result]

# Held engines: one dtype is one structure here.
other = RunRequest(checkpoint="/nonexistent", prompts=[[1, 2]], decode_steps=1, dtype="bfloat16", out="",
                   capture=False)
for case, engine in {"reuse": Engine(None, held=True), "reload": Engine("reload", held=True)}.items():
    reused = [engine.run(r).reused for r in (request, request, other)]
    engine.close()
    out[case] = [engine.calls, reused]

# A fresh request: the held engine torn down first, its own built and torn down, nothing held after it.
engine = Engine(None, held=True, slow_teardown=0.2)
replies = [engine.run(r) for r in (request, dataclasses.replace(request, fresh=True), request)]
engine.close()
out["fresh"] = [engine.calls, [r.reused for r in replies], [r.seconds for r in replies]]
print(json.dumps(out))
'''


def test_teardown_follows_every_failure_and_only_its_own_failure_is_fatal():
    python = envs.ensure(BACKENDS["transformers"], "cpu")
    proc = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["load"] == [["load", "teardown(None)"], "RuntimeError: load refused"]
    assert out["generate"] == [["load", "generate", "teardown(model)"], "RuntimeError: generate refused"]
    assert out["none"] == [["load", "generate", "teardown(model)"], ["forward", "load", "released", "save", "teardown"]]
    assert out["stuck"][0] == ["load", "teardown(None)"]
    assert out["stuck"][1] == "Unusable: fake could not be torn down after RuntimeError: load refused: OSError: stuck"
    # same structure: reloaded into the held engine; another: the held one torn down first; the last one at close
    assert out["reuse"] == [["load", "generate", "reload", "generate", "teardown(model)", "load", "generate",
                             "teardown(model)"], [False, True, False]]
    # a failed reload: never served, torn down, and a fresh engine built
    # fresh: the held engine's teardown is "released", apart from the fresh engine's own, and neither is "load"
    calls, reused, seconds = out["fresh"]
    assert calls == ["load", "generate", "teardown(model)", "load", "generate", "teardown(model)", "load",
                     "generate", "teardown(model)"]
    assert reused == [False, False, False]
    assert seconds[0]["teardown"] < 0.2 and seconds[0]["released"] == 0.0  # held for the next request
    assert seconds[1]["released"] >= 0.2 and seconds[1]["teardown"] >= 0.2 and seconds[1]["load"] < 0.2
    assert seconds[2]["released"] == 0.0 and seconds[2]["teardown"] < 0.2  # the fresh one was not held
    assert out["reload"] == [["load", "generate", "reload", "teardown(model)", "load", "generate", "teardown(model)",
                              "load", "generate", "teardown(model)"], [False, False, False]]
