"""A worker without an engine, for the orchestrator's unit tests: it answers the
contract's requests at once with synthetic canonical activations.

The reference's fp64 run is the truth; its low-precision run and every backend add
noise of ~1e-7 (so they pass); a backend with a ``bug`` adds an O(1) error to one
tensor kind from some layer (and decode step) on, and one with a ``failure`` answers
with an error. Activations follow the tokens fed: a backend given ``tokens`` picks those
greedy tokens (in its low-precision runs, for the reference), and a teacher-forced
request is served along its ``forced`` tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from safetensors.numpy import save_file

from parity import registry, schema
from parity.backends import BackendSpec
from parity.pool import WorkerError
from parity.worker.contract import (Capabilities, CheckpointReply, CheckpointRequest, ReleaseReply, ReleaseRequest,
                                    RunReply, RunRequest, ShutdownRequest)

HIDDEN, HEADS, HEAD_DIM, VOCAB = 8, 2, 4, 16

Bug = Callable[[Mapping[str, Any]], "tuple[str, int] | tuple[str, int, int] | None"]
"""config -> (tensor kind, first layer[, first step]) the backend gets wrong, or None."""

Tokens = Callable[[Mapping[str, Any]], "list[list[int]] | None"]
"""config -> per prompt, the greedy tokens fed at decode steps 1..n (None: the reference's own)."""

REFERENCE_TOKENS = 1  # the fp64 truth feeds token 1 + step at decode step 1 + step

Failure = Callable[[Mapping[str, Any]], "tuple[str, bool] | None"]
"""config -> (error message, whether the worker stays usable), or None."""


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12], 16))


def activations(config: Mapping[str, Any], prompts: list[list[int]], decode_steps: int,
                fed: list[list[int]] | None = None) -> dict[str, np.ndarray]:
    """The fp64 truth along the tokens ``fed`` at decode steps (default: its own greedy ones):
    deterministic in the config, prompt and tokens fed so far."""
    out: dict[str, np.ndarray] = {}
    for p, prompt in enumerate(prompts):
        decoded = fed[p] if fed else list(range(REFERENCE_TOKENS, REFERENCE_TOKENS + decode_steps))
        for step in range(decode_steps + 1):
            tokens = len(prompt) if step == 0 else 1
            ids = np.array(prompt if step == 0 else [decoded[step - 1]], dtype=np.int64)
            out[schema.key(step, p, schema.TOKEN_IDS)] = ids
            rng = _rng(config, prompt, decoded[:step])
            names = {"embed": (tokens, HIDDEN), "final_norm": (tokens, HIDDEN), "logits": (1, VOCAB)}
            for layer in range(config["num_hidden_layers"]):
                names |= {schema.layer_name(layer, "q_rot"): (tokens, HEADS, HEAD_DIM),
                          schema.layer_name(layer, "k_rot"): (tokens, HEADS, HEAD_DIM),
                          **{schema.layer_name(layer, k): (tokens, HIDDEN) for k in ("attn_out", "mlp_out", "residual")}}
            for name, shape in names.items():
                out[schema.key(step, p, name)] = rng.standard_normal(shape)
    return out


class FakeWorker:
    def __init__(self, spec: BackendSpec, engine: str = "fake", version: str = "1", bug: Bug | None = None,
                 failure: Failure | None = None, on_run: Callable[[RunRequest], None] | None = None,
                 tokens: Tokens | None = None, refuses: Mapping[str, str] | None = None,
                 unsupported_execution: dict[str, str] | None = None, teardown_fails: bool = False,
                 dies_after_run: bool = False):
        self.spec = spec
        self.unsupported_execution = unsupported_execution or {}
        self.python = "fake-python"
        self.engine, self.version = engine, version
        self.bug, self.failure, self.on_run, self.tokens = bug, failure, on_run, tokens
        self.refuses = dict(refuses or {})
        self.starts = 0
        self.runs: list[RunRequest] = []
        self.releases, self.teardown_fails, self.dies_after_run = 0, teardown_fails, dies_after_run
        self._replies: deque[Any] = deque()

    @property
    def label(self) -> str:
        return self.spec.label

    def start(self) -> Capabilities:
        self.starts += 1
        self.capabilities = Capabilities(
            engine=self.engine, versions={self.engine: self.version},
            architectures=[s.architecture for s in registry.ARCHITECTURES.values()], head_sizes=None,
            dtypes=[d for d in ("float32", "float64", "bfloat16") if d not in self.refuses],
            unsupported_dtypes=self.refuses, unsupported_features={}, unsupported_execution=self.unsupported_execution,
            pid=1000 + self.starts, python=self.python)
        return self.capabilities

    def restart(self) -> Capabilities:
        self._replies.clear()
        return self.start()

    def stop(self) -> None:
        self._replies.clear()

    def call(self, request: Any, timeout: float) -> Any:
        self.submit(request)
        return self.receive(timeout)

    def submit(self, request: Any) -> None:
        if isinstance(request, CheckpointRequest):
            self._replies.append(self._checkpoint(request))
        elif isinstance(request, RunRequest):
            self.runs.append(request)
            if self.on_run:
                self.on_run(request)
            self._replies.append(self._run(request))
        elif isinstance(request, ReleaseRequest):
            if self.dies_after_run and self.starts == 1:
                raise WorkerError(self.label, "worker is not running", "Segmentation fault")
            self.releases += 1
            self._replies.append(WorkerError(self.label, "Unusable: vllm could not be torn down", "Traceback: ...",
                                             usable=False, kind="Unusable") if self.teardown_fails
                                 else ReleaseReply(seconds=0.0))
        elif isinstance(request, ShutdownRequest):
            self._replies.clear()

    def receive(self, timeout: float) -> Any:
        reply = self._replies.popleft()
        if isinstance(reply, WorkerError):
            raise reply
        return reply

    def _checkpoint(self, request: CheckpointRequest) -> CheckpointReply:
        directory = Path(request.dir)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(request.config))
        save_file({"weight": np.zeros(2, dtype=np.float32)}, str(directory / "model.safetensors"))
        return CheckpointReply(files=["config.json", "model.safetensors"])

    def _run(self, request: RunRequest) -> RunReply | WorkerError:
        config = json.loads((Path(request.checkpoint) / "config.json").read_text())
        failed = self.failure(config) if self.failure else None
        if failed:
            message, usable = failed
            return WorkerError(self.label, f"RuntimeError: {message}", "Traceback: ...", usable=usable,
                               kind="RuntimeError")
        greedy = self.tokens(config) if self.tokens and request.dtype != "float64" else None
        tensors = activations(config, request.prompts, request.decode_steps, request.forced or greedy)
        bug = self.bug(config) if self.bug else None
        for key, value in tensors.items():
            if key.endswith(schema.TOKEN_IDS) or request.dtype == "float64":
                continue
            noise = _rng(self.label, key, request.dtype).standard_normal(value.shape)
            tensors[key] = value + 1e-7 * noise * np.linalg.norm(value) / np.sqrt(value.size)
            step, _, name = schema.parse_key(key)
            kind, layer = schema.parse_name(name)
            if bug and kind == bug[0] and layer is not None and layer >= bug[1] and step >= (bug[2:] or (0,))[0]:
                tensors[key] = value + noise
        save_file(tensors, request.out)
        return RunReply(file=request.out, seconds={"load": 0.0, "forward": 0.0, "save": 0.0, "teardown": 0.0, "released": 0.0})


def launcher(**backends: dict[str, Any]) -> Callable[[BackendSpec], FakeWorker]:
    """A session's ``launch``: fake workers, each configured by its label's keyword arguments."""
    workers: dict[str, FakeWorker] = {}

    def launch(spec: BackendSpec) -> FakeWorker:
        workers[spec.label] = FakeWorker(spec, **backends.get(spec.label, {}))
        return workers[spec.label]

    launch.workers = workers  # type: ignore[attr-defined]
    return launch
