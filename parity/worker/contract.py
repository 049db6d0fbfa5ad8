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
from typing import Any, ClassVar, Mapping, TypeVar

PROTOCOL_VERSION = 4


class ContractError(ValueError):
    """A message does not fit the contract."""


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
    unsupported_features: dict[str, str]
    """Features of ``parity.registry.FEATURES`` the engine lacks -> why."""

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


@dataclass(frozen=True)
class RunReply:
    seconds: dict[str, float]
    """Worker-side load, forward, save and teardown."""

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


REQUESTS: Mapping[str, type] = {r.op: r for r in (RunRequest, CheckpointRequest, SurfaceRequest, ShutdownRequest)}
REPLIES: Mapping[type, type] = {RunRequest: RunReply, CheckpointRequest: CheckpointReply,
                                SurfaceRequest: SurfaceReply, ShutdownRequest: ShutdownReply}

Record = TypeVar("Record")


def to_json(record: Any) -> dict[str, Any]:
    return asdict(record)


def from_json(cls: type[Record], data: Mapping[str, Any]) -> Record:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    missing = sorted(f.name for f in fields(cls) if f.name not in data
                     and f.default is MISSING and f.default_factory is MISSING)
    if unknown or missing:
        raise ContractError(f"{cls.__name__}: " + "; ".join(
            filter(None, [unknown and f"unknown field(s) {', '.join(unknown)}",
                          missing and f"missing field(s) {', '.join(missing)}"])))
    return cls(**data)


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
