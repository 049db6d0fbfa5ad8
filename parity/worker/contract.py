"""The typed contract between the orchestrator and its workers, imported on both sides
of the pipe: the hello (:class:`Capabilities`), the requests and their replies.

Standard library only: engine environments may lack pydantic. Messages travel as
JSON objects (framing in :mod:`parity.worker.protocol`); a request carries its
operation name under ``op``. Both sides build records with :func:`from_json`,
which refuses unknown and missing fields, so a worker importing another parity
version than the orchestrator fails at once, not with a misread field later.
The hello is checked first, by :func:`hello`, so such a mismatch is reported as
one: different protocol versions.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

PROTOCOL_VERSION = 9


class ContractError(ValueError):
    """A message does not fit the contract."""


EXECUTION_MODES = ("tensor_parallel", "chunked_prefill", "prefix_cache", "kv_block", "join_running")
"""The ways to run a model other than the plainest, as ``Capabilities.unsupported_execution`` names them."""


@dataclass(frozen=True)
class Execution:
    """How an engine runs a model, drawn with the example like a config key: every field's
    default is the plainest way (one rank, whole prompts in one forward, no cache reuse), the
    one a failure shrinks to."""

    tensor_parallel: int = 1
    """Tensor-parallel ranks."""

    prefill_chunk: int | None = None
    """Chunked prefill: at most this many tokens per forward, so prompts are split; None runs
    every prompt whole."""

    prefix_cache: bool = False
    """Reuse the KV of an earlier request's shared prefix: the prompts share one
    (``parity.strategies.SHARED_PREFIX`` tokens) and are served one after another, so every
    later request finds it cached."""

    kv_block: int | None = None
    """Tokens per KV-cache block (page); None is the engine's default, one block for a whole sequence on vLLM's
    CPU (128 tokens), one token per page on SGLang's."""

    join_running: bool = False
    """Requests join a running batch: each prompt after the first arrives once the one before it has its first
    token, so its prefill shares a forward with the decode steps of the prompts running (a mixed batch). The
    prompts come longest first (:func:`joinable`): a later prompt's positions then stay below every earlier one's
    decode position, so each token of a mixed forward names its prompt (``parity.worker.routing``)."""

    def modes(self) -> list[str]:
        """The ways this differs from the plainest run (of ``EXECUTION_MODES``)."""
        on = (self.tensor_parallel > 1, self.prefill_chunk is not None, self.prefix_cache, self.kv_block is not None,
              self.join_running)
        return [name for name, active in zip(EXECUTION_MODES, on) if active]

    def describe(self) -> str:
        """Only what differs from the plainest run; empty for it."""
        return " ".join(filter(None, [self.tensor_parallel > 1 and f"tp={self.tensor_parallel}",
                                      self.prefill_chunk is not None and f"prefill_chunk={self.prefill_chunk}",
                                      self.prefix_cache and "prefix_cache",
                                      self.kv_block is not None and f"kv_block={self.kv_block}",
                                      self.join_running and "join_running"]))


def joinable(prompts: Sequence[Sequence[int]]) -> bool:
    """Whether prompts may join a running batch one after another: two at least, longest first."""
    lengths = [len(p) for p in prompts]
    return len(lengths) > 1 and all(a > b for a, b in zip(lengths, lengths[1:]))


@dataclass(frozen=True)
class Capabilities:
    """The hello: which engine a worker runs and what it supports."""

    engine: str
    versions: dict[str, str]
    """Package -> version: the engine's own, torch's and transformers' at least."""

    architectures: list[str]
    """Architecture classes the engine registers (e.g. ``LlamaForCausalLM``)."""

    head_sizes: list[int] | None
    """Head sizes its attention accepts; None for any."""

    dtypes: list[str]
    """The dtypes the engine runs on this machine."""

    unsupported_dtypes: dict[str, str]
    """Dtypes parity may ask for that the engine cannot run here -> why (decided from the engine's own
    checks before any model is built: a kernel that needs instructions the CPU lacks dies with SIGILL)."""

    unsupported_features: dict[str, str]
    """Features of ``parity.registry.FEATURES`` the engine lacks -> why."""

    unsupported_execution: dict[str, str]
    """Execution modes (``Execution.modes``) the engine, or parity's adapter for it, cannot run -> why."""

    pid: int
    python: str
    protocol: int = PROTOCOL_VERSION

    @property
    def engine_version(self) -> str:
        return self.versions.get(self.engine, "")

    @property
    def versions_text(self) -> str:
        return " ".join(f"{k} {v}" for k, v in self.versions.items())


@dataclass(frozen=True)
class RunRequest:
    """Load a checkpoint, serve the prompts (prefill, then greedy decode) and, with
    ``capture``, write the canonical tensors to ``out``."""

    op: ClassVar[str] = "run"
    checkpoint: str
    prompts: list[list[int]]
    decode_steps: int
    dtype: str
    out: str
    modules: dict[str, Any] = field(default_factory=dict)
    """The family's module names (``parity.registry.ModuleNames``); empty for Llama's."""

    capture: bool = True
    """False times the bare engine: no hooks, no recorder, nothing saved."""

    forced: list[list[int]] = field(default_factory=list)
    """Teacher forcing (the reference alone serves it): per prompt, the tokens fed at decode steps 1..n
    instead of the model's own greedy ones; empty: greedy."""
    execution: Execution = field(default_factory=Execution)
    fresh: bool = False
    """Build an engine for this request alone and tear it down after it, even where one of the same structure is
    held (which is torn down first): a bare run timing an engine's whole life."""

    def __post_init__(self) -> None:
        if self.execution.join_running and not joinable(self.prompts):
            raise ContractError(f"prompts of {[len(p) for p in self.prompts]} tokens cannot join a running batch: "
                                f"two at least, longest first")


@dataclass(frozen=True)
class RunReply:
    seconds: dict[str, float]
    """Worker-side load, forward, save and teardown ("load" is the reload when ``reused``; "teardown" is this
    request's engine's, zero when it is held for the next request), and "released": the teardown, before this
    request's load, of an engine held from an earlier request that this one could not use."""

    reused: bool = False
    """The engine held from the previous request (same structure) served this one with the checkpoint's weights
    reloaded into it, instead of a new engine being built."""

    file: str | None = None
    """The safetensors file of canonical tensors; None without capture."""

    non_finite: list[str] = field(default_factory=list)
    """Captured tensors holding NaN or Inf."""


@dataclass(frozen=True)
class CheckpointRequest:
    """Write the random-weight checkpoint of ``config`` (weights drawn from ``seed``) into ``dir``."""

    op: ClassVar[str] = "write_checkpoint"
    config: dict[str, Any]
    seed: int
    dir: str


@dataclass(frozen=True)
class CheckpointReply:
    files: list[str]


@dataclass(frozen=True)
class SurfaceRequest:
    """Measure which config keys the reference reads for ``config`` and which change its output
    (``parity.worker.surface``); the reference worker alone serves it."""

    op: ClassVar[str] = "surface"
    config: dict[str, Any]
    seed: int
    prompts: list[list[int]]
    decode_steps: int
    modules: dict[str, Any] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    """Keys already known to change the output: not measured again."""

    candidates: dict[str, list[Any]] = field(default_factory=dict)
    """Values to try first per key: the strategies' own draws."""


@dataclass(frozen=True)
class SurfaceReply:
    entries: list[dict[str, Any]]
    """Per key read, under the name the config stores it: key, read (how), value, effect, tried,
    drawn_act, error."""

    aliases: dict[str, str]
    """The config class's other names for stored keys (alias -> stored name)."""

    seconds: dict[str, float]


@dataclass(frozen=True)
class ModulesRequest:
    """Where the engine implements each of ``architectures``: what ``parity pr`` maps changed files through."""

    op: ClassVar[str] = "modules"
    architectures: list[str]


@dataclass(frozen=True)
class ModulesReply:
    modules: dict[str, list[str]]
    """Architecture -> the module defining its class, then the engine's other model modules that module
    takes names from (a port built on another family's classes, the models' shared helpers); an
    architecture the engine does not register is left out."""


@dataclass(frozen=True)
class GenericRequest:
    """Derive the generic tier's config template from transformers' config classes for every model type whose
    causal LM is one of ``architectures`` (``parity.worker.generic``); the reference worker alone serves it."""

    op: ClassVar[str] = "generic"
    architectures: list[str]


@dataclass(frozen=True)
class GenericReply:
    entries: dict[str, dict[str, Any]]
    """model_type -> architecture, keys (parity's size names -> the family's), fixed (values written with every draw);
    or error, why no tiny model could be derived."""


@dataclass(frozen=True)
class ReleaseRequest:
    """Tear down the engine held for a next request, if any: the next is unlikely to share its structure, and
    tearing it down now overlaps the orchestrator's comparison and next checkpoint instead of delaying the next
    load."""

    op: ClassVar[str] = "release"


@dataclass(frozen=True)
class ReleaseReply:
    seconds: float
    """The teardown's; zero when nothing was held."""


@dataclass(frozen=True)
class ShutdownRequest:
    op: ClassVar[str] = "shutdown"


@dataclass(frozen=True)
class ShutdownReply:
    pass


@dataclass(frozen=True)
class ErrorReply:
    type: str
    message: str
    traceback: str
    usable: bool
    """The worker cleaned up after the failure and serves the next request; False asks for a restart."""


REQUESTS: Mapping[str, type] = {r.op: r for r in (RunRequest, CheckpointRequest, SurfaceRequest, ModulesRequest,
                                                  GenericRequest, ReleaseRequest, ShutdownRequest)}
REPLIES: Mapping[type, type] = {RunRequest: RunReply, CheckpointRequest: CheckpointReply,
                                SurfaceRequest: SurfaceReply, ModulesRequest: ModulesReply, GenericRequest: GenericReply,
                                ReleaseRequest: ReleaseReply, ShutdownRequest: ShutdownReply}

Record = TypeVar("Record")


def to_json(record: Any) -> dict[str, Any]:
    return asdict(record)


NESTED: Mapping[str, type] = {"execution": Execution}
"""Fields holding a record of their own, rebuilt (and checked) by :func:`from_json`."""


def from_json(cls: type[Record], data: Mapping[str, Any]) -> Record:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    missing = sorted(f.name for f in fields(cls) if f.name not in data
                     and f.default is MISSING and f.default_factory is MISSING)
    if unknown or missing:
        raise ContractError(f"{cls.__name__}: " + "; ".join(
            filter(None, [unknown and f"unknown field(s) {', '.join(unknown)}",
                          missing and f"missing field(s) {', '.join(missing)}"])))
    return cls(**{k: from_json(NESTED[k], v) if k in NESTED and isinstance(v, Mapping) else v
                  for k, v in data.items()})


def request_to_json(request: Any) -> dict[str, Any]:
    return {"op": request.op, **asdict(request)}


def request_from_json(data: Mapping[str, Any]) -> Any:
    body = dict(data)
    op = body.pop("op", None)
    if op not in REQUESTS:
        raise ContractError(f"unknown operation {op!r}; known: {', '.join(REQUESTS)}")
    return from_json(REQUESTS[op], body)


def hello(data: Mapping[str, Any]) -> Capabilities:
    """The worker's hello as Capabilities, once its protocol version is this parity's."""
    version = data.get("protocol")
    if version != PROTOCOL_VERSION:
        raise ContractError(
            f"the worker speaks protocol version {version!r} and this parity {PROTOCOL_VERSION}: it imported "
            f"another parity than the orchestrator's (check PYTHONPATH and any parity installed in that environment)")
    return from_json(Capabilities, data)
