"""The skeleton every engine adapter shares: one run of one model, timed, captured or
bare, hooks removed and the engine torn down whatever happened, a failed load included.

An adapter subclasses :class:`EngineAdapter` and supplies only its engine's
conventions: what it reports about itself, how it loads a checkpoint, where the
capture hooks go, how it serves prompts, and how it undoes a model's
process-wide state. A failure anywhere (load, forward, save) is followed by that
teardown, so the worker serves the next request without a restart; only a
failing teardown leaves the worker :class:`Unusable`.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from abc import ABC, abstractmethod
from typing import ClassVar, Generic, Mapping, TypeVar

from parity.worker.capture import Hooks, NullRecorder, Recorder, config_head_dim, save
from parity.worker.contract import (EXECUTION_MODES, Capabilities, ContractError, GenericReply, GenericRequest,
                                    ModulesReply, ModulesRequest, RunReply, RunRequest, SurfaceReply, SurfaceRequest)

Loaded = TypeVar("Loaded")
"""What an engine's load returns: the model, or the engine object holding it."""


class Unusable(RuntimeError):
    """The engine could not be torn down: the worker must be restarted."""


class EngineAdapter(ABC, Generic[Loaded]):
    engine: ClassVar[str]
    """Name under which known issues and reports list the engine (its version is ``versions()[engine]``)."""

    dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
    """The dtypes the engine implements; :meth:`unsupported_dtypes` strikes those this machine cannot run."""

    teacher_forcing: ClassVar[bool] = False
    """Whether :meth:`generate` feeds ``RunRequest.forced`` tokens (the reference's job)."""

    def __init__(self, device: str = "cpu"):
        self.device = device

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

    # -- the skeleton -------------------------------------------------------

    def run(self, request: RunRequest) -> RunReply:
        # The model lives only in ``held`` between calls, so teardown is handed the last
        # reference and can free the model before it collects garbage.
        if request.forced and not self.teacher_forcing:
            raise ContractError(f"{self.engine} serves greedy decoding only; teacher forcing is the reference's")
        held: list[Loaded] = []
        t0 = time.perf_counter()
        try:
            held.append(self.load(request))
            t1 = time.perf_counter()
            if request.capture:
                rec: Recorder | NullRecorder = Recorder(request.prompts, request.decode_steps,
                                                        config_head_dim(request.checkpoint))
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
        self._teardown(held)
        return RunReply(file=request.out if request.capture else None, non_finite=non_finite,
                        seconds={"load": t1 - t0, "forward": t2 - t1, "save": t3 - t2,
                                 "teardown": time.perf_counter() - t3})

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
