"""The skeleton every engine adapter shares: one run of one model, timed, captured or
bare, hooks removed and the engine torn down whatever happened, a failed load included.

An engine that ran its request cleanly is held for the next one when the adapter names
its structure (:meth:`EngineAdapter.structure`): a request of the same structure (Hypothesis
shrinking retries one config with other weights and prompts) reloads only the weights into
it, and any other request tears it down first. A failed reload falls back to teardown and a
fresh load; a failure after the load tears the engine down as before. A ``fresh`` request (a bare
run timing an engine's whole life) tears down whatever is held, builds its own engine and tears that
down too, holding nothing.

An adapter subclasses :class:`EngineAdapter` and supplies only its engine's
conventions: what it reports about itself, how it loads a checkpoint, where the
capture hooks go, how it serves prompts, and how it undoes a model's
process-wide state. A failure anywhere (load, forward, save) is followed by that
teardown, so the worker serves the next request without a restart; only a
failing teardown leaves the worker :class:`Unusable`.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from abc import ABC, abstractmethod
from typing import ClassVar, Generic, Hashable, Mapping, TypeVar

from parity.worker.capture import Hooks, NullRecorder, Recorder, config_head_dim, save
from parity.worker.contract import (EXECUTION_MODES, Capabilities, ContractError, GenericReply, GenericRequest,
                                    ModulesReply, ModulesRequest, ReleaseReply, ReleaseRequest, RunReply, RunRequest,
                                    SurfaceReply, SurfaceRequest)

Loaded = TypeVar("Loaded")
"""What an engine's load returns: the model, or the engine object holding it."""


def checkpoint_structure(checkpoint: str) -> tuple[tuple[str, bytes], ...]:
    """What a checkpoint directory holds but its weights' values: every file's content, save parity's own
    record (which names the weight seed) and the safetensors files', of which only the header (tensor names,
    dtypes and shapes) is taken. Two checkpoints with equal structure build the same model."""
    import json
    import struct
    from pathlib import Path

    out = []
    for path in sorted(Path(checkpoint).iterdir()):
        if path.name == "parity.json":
            continue
        if path.suffix == ".safetensors":
            with path.open("rb") as f:
                header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
            header.pop("__metadata__", None)
            out.append((path.name, json.dumps(header, sort_keys=True).encode()))
        else:
            out.append((path.name, path.read_bytes()))
    return tuple(out)


class Unusable(RuntimeError):
    """The engine could not be torn down: the worker must be restarted."""


class EngineAdapter(ABC, Generic[Loaded]):
    engine: ClassVar[str]
    """Name under which known issues and reports list the engine (its version is ``versions()[engine]``)."""

    dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
    """The dtypes the engine implements; :meth:`unsupported_dtypes` strikes those this machine cannot run."""

    teacher_forcing: ClassVar[bool] = False
    """Whether :meth:`generate` feeds ``RunRequest.forced`` tokens (the reference's job)."""

    runs_execution: ClassVar[bool] = True
    """Whether the adapter serves a request the way its ``execution`` says (False: it ignores the execution)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._held: tuple[Hashable, Loaded] | None = None
        """The engine of the last clean run, with its structure, kept for a request of the same."""

    # -- what the engine says about itself --------------------------------

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """The engine's, torch's and transformers' versions."""

    @abstractmethod
    def architectures(self) -> list[str]:
        """Architecture classes the engine registers."""

    def head_sizes(self) -> list[int] | None:
        """Head sizes its attention takes; None for any."""
        return None

    def unsupported_dtypes(self) -> dict[str, str]:
        """Dtypes of :attr:`dtypes` the engine cannot run on this machine, with the reason."""
        return {}

    def unsupported_features(self) -> dict[str, str]:
        """Features of ``parity.registry.FEATURES`` the engine lacks, with the reason."""
        return {}

    def unsupported_execution(self) -> dict[str, str]:
        """Execution modes (``Execution.modes``) that the engine, or this adapter, cannot run, with the
        reason. An adapter claims a mode only once it honours it in ``load``/``generate`` and its
        capture still yields the canonical tensors."""
        return {mode: f"parity's {self.engine} adapter does not run it" for mode in EXECUTION_MODES}

    def capabilities(self) -> Capabilities:
        refused = self.unsupported_dtypes()
        return Capabilities(engine=self.engine, versions=self.versions(), architectures=sorted(self.architectures()),
                            head_sizes=self.head_sizes(), dtypes=[d for d in self.dtypes if d not in refused],
                            unsupported_dtypes=refused, unsupported_features=self.unsupported_features(),
                            unsupported_execution=self.unsupported_execution(), pid=os.getpid(), python=sys.executable)

    # -- the engine's conventions -----------------------------------------

    @abstractmethod
    def load(self, request: RunRequest) -> Loaded:
        """Build the engine's model for ``request.checkpoint`` in ``request.dtype``."""

    @abstractmethod
    def hook(self, loaded: Loaded, rec: Recorder, modules: Mapping[str, str]) -> Hooks:
        """Put the capture hooks on the live model (module names from the family's registry entry)."""

    @abstractmethod
    def generate(self, loaded: Loaded, rec: Recorder | NullRecorder, request: RunRequest) -> None:
        """Prefill every prompt, then ``request.decode_steps`` greedy decode steps."""

    @abstractmethod
    def teardown(self, loaded: Loaded | None) -> None:
        """Undo the model's process-wide state so the next model can be built; ``loaded`` is
        None after a failed load, whose half-built state must go just the same."""

    def structure(self, request: RunRequest) -> Hashable | None:
        """Everything that decides how the engine for ``request`` is built, weights aside: two requests of
        equal structure may share one engine, weights reloaded in between. None (the default) never shares;
        an adapter that returns a key must implement :meth:`reload`."""
        return None

    def reload(self, loaded: Loaded, request: RunRequest) -> None:
        """Load ``request.checkpoint``'s weights into ``loaded`` (built for a request of the same structure) and
        drop every state an earlier request left in it (cached KV), so it serves as a fresh load would."""
        raise NotImplementedError(f"{self.engine} does not reload weights")

    # -- the skeleton -------------------------------------------------------

    def run(self, request: RunRequest) -> RunReply:
        # The model lives only in ``held`` during a run, so teardown is handed the last
        # reference and can free the model before it collects garbage.
        if request.forced and not self.teacher_forcing:
            raise ContractError(f"{self.engine} serves greedy decoding only; teacher forcing is the reference's")
        t0 = time.perf_counter()
        key = None if request.fresh else self.structure(request)
        held, reused, released = self._ready(key, request)
        try:
            if not held:
                held.append(self.load(request))
            t1 = time.perf_counter()
            if request.capture:
                rec: Recorder | NullRecorder = Recorder(request.prompts, request.decode_steps,
                                                        config_head_dim(request.checkpoint),
                                                        joining=self.runs_execution and request.execution.join_running)
                hooks = self.hook(held[0], rec, request.modules)
            else:
                rec, hooks = NullRecorder(), Hooks()
            try:
                self.generate(held[0], rec, request)
            finally:
                hooks.remove()
            t2 = time.perf_counter()
            non_finite = save(rec.tensors(), request.out) if isinstance(rec, Recorder) else []
            t3 = time.perf_counter()
        except BaseException as exc:
            # The traceback's frames hold the engine (a failure inside its forward): freed now, its finalizers
            # tear down process-wide state before the next model builds its own, not in the middle of it.
            traceback.clear_frames(exc.__traceback__)
            self._teardown(held, failure=exc)
            raise
        if key is None:
            self._teardown(held)
        else:
            self._held = (key, held.pop())
        return RunReply(file=request.out if request.capture else None, non_finite=non_finite, reused=reused,
                        seconds={"load": t1 - t0 - released, "forward": t2 - t1, "save": t3 - t2,
                                 "teardown": time.perf_counter() - t3, "released": released})

    def _ready(self, key: Hashable | None, request: RunRequest) -> tuple[list[Loaded], bool, float]:
        """The held engine with ``request``'s weights reloaded when its structure is ``key`` (``[engine], True``),
        else nothing, the held engine torn down (``[], False``); then the seconds that teardown took."""
        if self._held is None:
            return [], False, 0.0
        held_key, engine = self._held
        self._held = None
        held = [engine]
        del engine
        failure: BaseException | None = None
        if key is not None and key == held_key:
            try:
                self.reload(held[0], request)
                return held, True, 0.0
            except BaseException as exc:
                # Never serve a half-reloaded model: it goes, and the request builds a fresh one.
                traceback.clear_frames(exc.__traceback__)
                print(f"parity: {self.engine} could not reload weights, rebuilding: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                failure = exc
        t0 = time.perf_counter()
        self._teardown(held, failure=failure)
        if failure is not None and not isinstance(failure, Exception):
            raise failure  # an interrupt stops the run, once the engine is gone
        return [], False, time.perf_counter() - t0

    def close(self) -> None:
        """Tear down the engine held for a next request, if any (the worker is stopping, or asked to release it)."""
        held = [self._held[1]] if self._held else []
        self._held = None
        if held:
            self._teardown(held)

    def release(self, request: ReleaseRequest) -> ReleaseReply:
        t0 = time.perf_counter()
        self.close()
        return ReleaseReply(seconds=time.perf_counter() - t0)

    def surface(self, request: SurfaceRequest) -> SurfaceReply:
        raise ContractError(f"{self.engine} does not measure config surfaces; the transformers reference does")

    def generic(self, request: GenericRequest) -> GenericReply:
        raise ContractError(f"{self.engine} does not derive configs; the transformers reference does")

    def model_modules(self, architecture: str) -> str | None:
        """The module defining the engine's class for ``architecture``; None where it registers none."""
        raise ContractError(f"{self.engine} does not say where its models live")

    def modules(self, request: ModulesRequest) -> ModulesReply:
        """Each architecture's module and the engine's other model modules it takes names from."""
        import importlib

        out: dict[str, list[str]] = {}
        for arch in request.architectures:
            name = self.model_modules(arch)
            if name is None:
                continue
            module = importlib.import_module(name)
            models = name.rpartition(".")[0] + "."
            used = {getattr(v, "__module__", None) or getattr(v, "__name__", "") for v in vars(module).values()}
            out[arch] = [name, *sorted(m for m in used if m.startswith(models) and m != name)]
        return ModulesReply(modules=out)

    def _teardown(self, held: list[Loaded], failure: BaseException | None = None) -> None:
        try:
            self.teardown(held.pop() if held else None)
        except BaseException as exc:
            after = f" after {type(failure).__name__}: {failure}" if failure else ""
            raise Unusable(f"{self.engine} could not be torn down{after}: {type(exc).__name__}: {exc}") from exc
        # What the worker imported and its first build left behind live as long as it: frozen once a collection
        # has taken the torn-down model's garbage (frozen garbage would never go), so later collections, three in
        # each engine build and teardown, no longer scan them (vLLM's ~700,000 objects, 0.33 s a scan; SGLang's
        # ~324,000, 0.15 s).
        gc.collect()
        gc.freeze()
