"""The report's records: typed, versioned models and nothing else.

``Report.model_json_schema()`` is the documented schema of report.json
(``parity schema`` prints it). Records forbid unknown fields so a reader never
silently misreads a report written by another version; ``schema_version`` says
which. Non-finite floats are written as the strings "Infinity" / "NaN" (plain
JSON has no such numbers) and read back as floats.

Everything else about a report builds on these: ``parity.summary`` counts them,
``parity.report`` reads and writes them, the renderers and the gate read them.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1

Status = Literal["pass", "diverged", "error", "unsupported"]
Verdict = Literal["ok", "diverged", "propagated", "skipped"]
Role = Literal["generated", "shrink", "replay"]
DecodeTrajectory = Literal["reference", "own", "split"]
STATUSES: tuple[str, ...] = get_args(Status)


class Record(BaseModel):
    # A NaN/Inf written as null (pydantic's default) could not be read back: a report
    # holding a non-finite candidate, the very case parity exists for, would be unreadable.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


class Metrics(Record):
    rel_l2: float = Field(description="||candidate - reference|| / ||reference||")
    max_abs: float
    cosine: float
    worst_token: int = Field(description="token (row) holding the largest absolute difference")
    worst_index: list[int] = Field(description="full index of that element")
    candidate_value: float
    reference_value: float
    non_finite: bool = Field(description="the candidate holds NaN or Inf")


class TensorRow(Metrics):
    step: int = Field(description="0 = prefill, k = k-th decode step")
    prompt: int
    tensor: str = Field(description="canonical name, e.g. layers.0.q_rot")
    kind: str
    layer: int | None
    floor: float = Field(description="the reference's own error at this dtype (noise floor)")
    band: float = Field(description="largest error a correct backend may show")
    verdict: Verdict


class Divergence(Metrics):
    tensor: str
    kind: str
    layer: int | None
    step: int
    prompt: int
    band: float
    reason: str
    per_token: list[float] = Field([], description="relative L2 of each token (row) of this tensor")


class BackendResult(Record):
    backend: str = Field(description="backend label, or 'A~B' for an engine-vs-engine comparison")
    status: Status
    reason: str | None = None
    first_divergence: Divergence | None = None
    known_issue: str | None = Field(None, description="diagnosis of the known engine bug this divergence or error is "
                                                       "(parity/known_issues.py); such results do not fail a run")
    diagnosis: Literal["confirmed", "matched"] | None = Field(
        None, description="how known_issue was established: 'confirmed' when the engine agrees with the reference "
                          "run on the config rewritten as the issue says the engine reads it, 'matched' when the "
                          "issue has nothing to test and matched the config and the symptom")
    max_rel_l2: float | None = Field(None, description="largest relative L2 over compared tensors")
    trajectory: DecodeTrajectory | None = Field(
        None, description="the greedy tokens decode steps were compared along: 'reference' (the fp64 reference's "
                          "own; the backend's equal them), 'own' (the backend's, which differ from the reference's: "
                          "the reference was teacher-forced along them, so every step is compared), 'split' (a pair "
                          "whose backends' tokens differ: steps after they part are not compared here, each backend "
                          "is compared with the reference along its own); null where nothing was compared")
    notes: list[str] = []
    seconds: dict[str, float] = Field({}, description="worker-side load/forward/save/teardown and released (the "
                                      "teardown, first, of the engine held from an earlier example of another "
                                      "structure), then orchestrator-side wait (submit to reply), transfer and compare")
    reused: bool = Field(False, description="the worker served this example with the engine it held from its "
                                            "previous one (same model structure and engine arguments), the "
                                            "checkpoint's weights reloaded into it, instead of building one")
    rows: list[TensorRow] = []

    @model_validator(mode="after")
    def _consistent(self) -> BackendResult:
        if (self.status == "diverged") != (self.first_divergence is not None):
            raise ValueError("a diverged result needs a first_divergence, and only a diverged one")
        if self.status in ("error", "unsupported") and not self.reason:
            raise ValueError(f"a result with status {self.status!r} must give a reason")
        if self.diagnosis and not self.known_issue:
            raise ValueError("a diagnosis needs the known issue it establishes")
        return self


class ExampleRecord(Record):
    id: str
    arch: str
    role: Role = Field(description="generated by the search, tried while shrinking, or replayed")
    minimal: bool = Field(False, description="the smallest failing example Hypothesis shrank to")
    description: str
    config: dict[str, Any]
    weight_seed: int
    prompts: list[list[int]]
    decode_steps: int
    execution: dict[str, Any] = Field({}, description="how the engines ran it (parity.worker.contract.Execution: "
                                      "tensor_parallel, prefill_chunk, prefix_cache, kv_block, join_running); "
                                      "empty for the plainest run")
    replay: str = Field(description="one command that re-runs exactly this example")
    seconds: dict[str, float] = Field({}, description="orchestrator time: checkpoint, released (waiting for the "
                                      "engines to finish tearing down the previous example's engine, released "
                                      "after its run), reference, teacher_forced (the reference along backends' "
                                      "own tokens), compare, total")
    results: list[BackendResult]

    @property
    def failed(self) -> bool:
        """A result diverged or errored, other than through a known engine issue."""
        return any(r.status in ("diverged", "error") and not r.known_issue for r in self.results)

    @property
    def headline_failure(self) -> bool:
        """Failed, and not merely a step of shrinking (those repeat what the minimal example shows)."""
        return self.failed and (self.role != "shrink" or self.minimal)


class BackendInfo(Record):
    label: str
    engine: str
    python: str
    versions: dict[str, str]
    patches: list[str] = []


class Summary(Record):
    examples: int
    by_backend: dict[str, dict[str, int]] = Field(description="backend -> status -> count of examples")
    by_arch: dict[str, dict[str, int]] = Field(description="arch -> status -> count of (example, backend) results")
    max_rel_l2: dict[str, float] = Field(description="backend -> largest relative L2 over passing examples")
    failing: list[str] = Field(description="ids of examples with a diverged or error result not explained "
                                           "by a known engine issue")
    coverage: dict[str, dict[str, dict[str, int]]] = Field(
        {}, description="arch -> knob -> value -> number of examples: what the run actually exercised")
    # Defaults keep reports written before these fields readable (they then show no known issues).
    known_by_backend: dict[str, dict[str, int]] = Field(
        {}, description="backend -> status -> how many of by_backend's results are known engine issues")
    known_by_arch: dict[str, dict[str, int]] = Field(
        {}, description="arch -> status -> how many of by_arch's results are known engine issues")

    @model_validator(mode="after")
    def _known_within_totals(self) -> Summary:
        for known, totals in ((self.known_by_backend, self.by_backend), (self.known_by_arch, self.by_arch)):
            for name, counts in known.items():
                for status, n in counts.items():
                    if n > totals.get(name, {}).get(status, 0):
                        raise ValueError(f"{n} known {status} results of {name} exceed its {status} count")
        return self


class SurfaceCoverage(Record):
    """One family's config surface (``parity surface``): of the keys that change the reference's output,
    how many the strategies vary."""

    transformers: str = Field(description="transformers version the surface was measured on")
    coverage: float = Field(description="varied keys / keys that change the output")
    varied: int
    changing: int = Field(description="keys that change the output")
    pinned: dict[str, str] = Field({}, description="keys that change the output but are held, with the reason")
    unclassified: list[str] = Field([], description="keys read that are neither varied, pinned nor neutral")
    varied_keys: list[str] = Field([], description="the varied keys that change the output")
    exercised: list[str] | None = Field(None, description="of varied_keys, those this run's examples of the family "
                                                          "drew at two values or more")


class Report(Record):
    schema_version: Literal[1] = SCHEMA_VERSION
    parity_version: str
    created: str
    command: str
    profile: str
    seed: int | None
    device: str
    dtype: str
    complete: bool = Field(description="false while running or after an interrupt")
    reference: BackendInfo
    backends: list[BackendInfo]
    examples: list[ExampleRecord]
    summary: Summary
    surface: dict[str, SurfaceCoverage] = Field(
        {}, description="arch -> config-surface coverage for the reference's transformers version (empty where "
                        "that version's surface has not been measured: parity surface --write)")

    @model_validator(mode="after")
    def _summary_matches(self) -> Report:
        if self.summary.examples != len(self.examples):
            raise ValueError(f"summary counts {self.summary.examples} examples, report holds {len(self.examples)}")
        return self
