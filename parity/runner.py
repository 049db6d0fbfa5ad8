"""One parity run: workers up, examples searched per architecture, every result
compared and written to the report as it completes.

Data flows one way: example -> checkpoint (written by the reference worker) ->
every backend's worker -> canonical activations -> comparison -> report.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any, Callable

from hypothesis import given
from hypothesis import seed as hypothesis_seed
from safetensors.numpy import load_file

import parity
from parity import backends as backends_mod
from parity import checkpoint_cache, compare, envs, known_issues, registry, surface
from parity import report as report_mod
from parity.backends import BackendSpec
from parity.example import Example
from parity.pool import Worker, WorkerError
from parity.profiles import Profile, hypothesis_settings
from parity.records import BackendInfo, BackendResult, ExampleRecord, Report
from parity.strategies import examples as example_strategy
from parity.strategies import supported_head_dims
from parity.summary import summarize
from parity.tolerance import PAIR_FACTOR


class HarnessError(RuntimeError):
    """Parity itself cannot go on (exit code 2): setup failed or the reference broke."""


@dataclass
class RunConfig:
    backends: list[BackendSpec]
    reference: BackendSpec = field(default_factory=lambda: BackendSpec("transformers", "reference"))
    device: str = "cpu"
    dtype: str = "float32"
    out: Path = Path("reports/latest")
    timeout: float = 300.0
    command: str = ""
    profile: str = "ci"
    seed: int | None = None
    resume: bool = False
    """Reuse the finished examples of an earlier (interrupted) report in ``out``."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Session:
    """Workers for the reference and every backend, and the results of one run."""

    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = _log):
        self.cfg = cfg
        self.log = log
        self.cache = envs.cache_dir()
        self.records: dict[str, ExampleRecord] = {}
        self.workers: dict[str, Worker] = {}

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> Session:
        try:
            self.cfg.out.mkdir(parents=True, exist_ok=True)
            probe = self.cfg.out / ".parity-write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise HarnessError(f"output directory {self.cfg.out} is not writable: {exc}") from None
        try:
            for spec in [self.cfg.reference, *self.cfg.backends]:
                python = spec.python or str(envs.ensure(spec.definition, self.cfg.device, self.log))
                self.workers[spec.label] = Worker(spec, python, self.cfg.device, self.cfg.out / "logs", self.cache)
            self.log(f"parity: starting {', '.join(self.workers)} workers")
            for w in self.workers.values():  # in turn: two engine imports at once only thrash 2 cores
                t0 = time.monotonic()
                hello = w.start()
                if self.cfg.dtype not in hello["dtypes"] + ["float64"]:
                    raise HarnessError(f"{w.label} does not support dtype {self.cfg.dtype}")
                self.log(f"parity:   {w.label}: {hello['engine']} "
                         + " ".join(f"{k} {v}" for k, v in hello["versions"].items())
                         + f" ({w.python}, {time.monotonic() - t0:.1f}s)")
        except (WorkerError, envs.EnvBuildError) as exc:
            self.close()
            raise HarnessError(_setup_hint(exc)) from None
        if self.cfg.resume:
            self._resume()
        return self

    def _resume(self) -> None:
        path = self.cfg.out / "report.json"
        if not path.exists():
            return
        try:
            earlier = report_mod.read(path)
        except ValueError as exc:
            raise HarnessError(f"--resume: {exc}") from None
        mine = (self.cfg.device, self.cfg.dtype, [self.info(w) for w in self.engines])
        if (earlier.device, earlier.dtype, earlier.backends) != mine:
            raise HarnessError(f"--resume: {path} was made with other backends, device or dtype; "
                               f"use another --out or drop --resume")
        self.records.update((ex.id, ex) for ex in earlier.examples)
        self.log(f"parity: resuming: {len(earlier.examples)} finished examples reused from {path}")

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for w in self.workers.values():
            w.stop()

    @property
    def reference(self) -> Worker:
        return self.workers[self.cfg.reference.label]

    @property
    def engines(self) -> list[Worker]:
        return [self.workers[s.label] for s in self.cfg.backends]

    # -- one example ------------------------------------------------------

    def supports(self, worker: Worker, arch: str, config: dict[str, Any] | None = None) -> str | None:
        """None if the backend can run the architecture (and the features ``config`` turns
        on, see ``registry.FEATURES``), else the reason it cannot, from the engine's own
        capabilities."""
        return supports(worker.hello, arch, config)

    def known(self, example: Example) -> ExampleRecord | None:
        return self.records.get(example.id)

    def evaluate(self, example: Example, role: str = "generated") -> ExampleRecord:
        if example.id in self.records:
            return self.records[example.id]
        t0 = time.monotonic()
        ckpt = self.cache / "checkpoints" / example.checkpoint_id
        acts = self.cfg.out / "activations" / example.id
        acts.mkdir(parents=True, exist_ok=True)
        request = {"checkpoint": str(ckpt), "prompts": [list(p) for p in example.prompts],
                   "decode_steps": example.decode_steps, "modules": asdict(registry.get(example.arch).modules)}
        try:
            checkpoint_cache.ensure(ckpt, lambda: self.reference.call(
                "write_checkpoint", self.cfg.timeout, config=example.config, seed=example.weight_seed, dir=str(ckpt),
            ), self.log)
        except (WorkerError, checkpoint_cache.CorruptCheckpoint) as exc:
            raise HarnessError(f"the reference could not build {example.describe()}: {exc}") from None
        t_ckpt = time.monotonic()

        runnable: dict[str, Worker] = {}
        results: dict[str, BackendResult] = {}
        for w in self.engines:
            reason = self.supports(w, example.arch, example.config)
            if reason:
                results[w.label] = BackendResult(backend=w.label, status="unsupported", reason=reason)
            else:
                runnable[w.label] = w
        # Backends run concurrently: every request goes out before any reply is awaited.
        ref_files = {d: str(acts / f"reference-{d}.safetensors") for d in ("float64", self.cfg.dtype)}
        for d, f in ref_files.items():
            self.reference.submit("run", **request, dtype=d, out=f)
        for label, w in runnable.items():
            w.submit("run", **request, dtype=self.cfg.dtype, out=str(acts / f"{label}.safetensors"))
        try:
            ref_replies = [self.reference.receive(self.cfg.timeout) for _ in ref_files]
        except WorkerError as exc:
            self._recover(self.reference)
            for w in runnable.values():
                self._drain(w)
            raise HarnessError(f"the reference failed on {example.describe()}: {exc}") from None
        t_ref = time.monotonic()
        exact = load_file(ref_files["float64"])
        low = load_file(ref_files[self.cfg.dtype])
        if ref_replies[0]["non_finite"]:
            raise HarnessError(f"the fp64 reference is non-finite on {example.describe()}: {ref_replies[0]['non_finite'][:3]}")
        floors = compare.floors(low, exact)
        captured: dict[str, dict[str, Any]] = {}
        for label, w in runnable.items():
            try:
                reply = w.receive(self.cfg.timeout)
                t1 = time.monotonic()
                captured[label] = load_file(reply["file"])
                t2 = time.monotonic()
                results[label] = self._judge(label, captured[label], exact, floors, 1.0)
                results[label].seconds = {k: round(v, 3) for k, v in {
                    **reply["seconds"], "wait": t1 - t_ckpt, "transfer": t2 - t1, "compare": time.monotonic() - t2,
                }.items()}
            except (WorkerError, ValueError) as exc:
                reason = exc.reason + "\n" + "\n".join(exc.log_tail.splitlines()[-12:]) if isinstance(exc, WorkerError) else str(exc)
                results[label] = BackendResult(backend=label, status="error", reason=reason)
                if isinstance(exc, WorkerError):
                    self._recover(w)
        for a, b in combinations(captured, 2):
            pair = f"{a}~{b}"
            results[pair] = self._judge(pair, captured[a], captured[b], floors, PAIR_FACTOR)
        for label, result in results.items():
            kind = result.first_divergence.kind if result.first_divergence else "error" if result.status == "error" else None
            if kind:
                engines = [(w.hello["engine"], w.hello["versions"].get(w.hello["engine"], "")) for w in
                           (self.workers[part] for part in label.split("~"))]
                result.known_issue = known_issues.explain(engines, example.arch, example.config, kind,
                                                          result.reason or "")
        record = ExampleRecord(
            id=example.id, arch=example.arch, role=role, description=example.describe(), config=example.config,
            weight_seed=example.weight_seed, prompts=[list(p) for p in example.prompts],
            decode_steps=example.decode_steps,
            replay=f"parity replay {shlex.quote(str(self.cfg.out / 'report.json'))} {example.id}",
            results=list(results.values()),
            seconds={k: round(v, 3) for k, v in {
                "checkpoint": t_ckpt - t0, "reference": t_ref - t_ckpt, "total": time.monotonic() - t0}.items()},
        )
        self.records[example.id] = record
        self._progress(record, time.monotonic() - t0)
        self.write(complete=False)
        return record

    def _judge(self, label: str, candidate, reference, floors, factor: float) -> BackendResult:
        rows, first, notes = compare.compare(candidate, reference, floors, self.cfg.dtype, factor)
        compared = [r.rel_l2 for r in rows if r.verdict != "skipped"]
        return BackendResult(backend=label, status="diverged" if first else "pass", first_divergence=first,
                             max_rel_l2=max(compared) if compared else None, notes=notes, rows=rows)

    def _recover(self, worker: Worker) -> None:
        """A failed worker is restarted: engines are not trusted after an exception mid-model."""
        try:
            worker.restart()
        except WorkerError as exc:
            raise HarnessError(f"{worker.label} could not be restarted: {exc}") from None

    def _drain(self, worker: Worker) -> None:
        try:
            worker.receive(self.cfg.timeout)
        except WorkerError:
            self._recover(worker)

    def _progress(self, record: ExampleRecord, seconds: float) -> None:
        parts = []
        for r in record.results:
            extra = f" {r.max_rel_l2:.1e}" if r.status == "pass" and r.max_rel_l2 is not None else ""
            if r.first_divergence:
                extra = f" at {r.first_divergence.tensor} (step {r.first_divergence.step})"
            extra += " [known engine issue]" if r.known_issue else ""
            parts.append(f"{r.backend} {r.status}{extra}")
        tag = {"generated": "", "shrink": " [shrinking]", "replay": " [replay]"}[record.role]
        self.log(f"[{len(self.records):>3}] {record.description}{tag}: {'; '.join(parts)} ({seconds:.1f}s)")

    # -- report -------------------------------------------------------------

    def mark_minimal(self, example_id: str) -> None:
        rec = self.records[example_id]
        self.records[example_id] = rec.model_copy(update={"minimal": True})

    def info(self, w: Worker) -> BackendInfo:
        return BackendInfo(label=w.label, engine=w.hello["engine"], python=w.python, versions=w.hello["versions"],
                           patches=list(w.spec.patches))

    def report(self, complete: bool) -> Report:
        examples = list(self.records.values())
        return Report(
            parity_version=parity.__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=self.cfg.command, profile=self.cfg.profile, seed=self.cfg.seed, device=self.cfg.device,
            dtype=self.cfg.dtype, complete=complete, reference=self.info(self.reference),
            backends=[self.info(w) for w in self.engines], examples=examples,
            summary=summarize(examples),
            surface=surface.coverage(sorted({e.arch for e in examples}),
                                     self.reference.hello["versions"].get("transformers", "")),
        )

    def write(self, complete: bool) -> Report:
        """The report so far; Markdown and HTML only once complete (an interrupt renders them itself)."""
        rep = self.report(complete)
        report_mod.write(rep, self.cfg.out, render=complete)
        return rep


def supports(hello: dict[str, Any], arch: str, config: dict[str, Any] | None = None) -> str | None:
    """The one place support is decided: a worker's capabilities (its hello) against an
    architecture and, given a config, the optional features it turns on."""
    spec = registry.get(arch)
    versions = " ".join(f"{k} {v}" for k, v in hello["versions"].items())
    if spec.architecture not in hello["architectures"]:
        return f"{hello['engine']} ({versions}) does not register {spec.architecture}"
    lacking = hello.get("unsupported_features") or {}
    for feature in registry.features(config or {}):
        if feature in lacking:
            return f"{hello['engine']} ({versions}) does not support {feature}: {lacking[feature]}"
    return None


class _Failed(Exception):
    """Raised inside the Hypothesis test so it shrinks towards a smaller failing example."""

    def __init__(self, example_id: str):
        super().__init__(example_id)
        self.example_id = example_id


def search(session: Session, arch: str, profile: Profile, seed: int | None) -> str | None:
    """Search one architecture; return the id of the minimal failing example, if any."""
    spec = registry.get(arch)
    runnable = [w for w in session.engines if session.supports(w, arch) is None]
    if not runnable:
        session.log(f"parity: {arch}: no selected backend supports it; recording one example as unsupported")
    head_dims = supported_head_dims(spec, [w.hello["head_sizes"] for w in runnable])
    if not head_dims:
        raise HarnessError(f"{arch}: none of its head sizes {spec.head_dims} is supported by "
                           + ", ".join(f"{w.label} ({w.hello['head_sizes']})" for w in runnable))
    strategy = example_strategy(arch, spec, head_dims, profile.decode_steps)
    shrink_deadline: list[float] = []

    def check(example: Example) -> None:
        record = session.known(example)
        if record is None:
            if shrink_deadline and time.monotonic() > shrink_deadline[0]:
                return  # shrink budget spent: treat untried examples as not failing
            record = session.evaluate(example, role="shrink" if shrink_deadline else "generated")
        if record.failed:
            if not shrink_deadline:
                shrink_deadline.append(time.monotonic() + profile.shrink_seconds)
            raise _Failed(record.id)
        if not runnable:
            raise _Unsupported()

    test = given(strategy)(check)
    test = hypothesis_settings(profile, session.cache / "examples", seeded=seed is not None)(test)
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    # One example-database key per architecture and backend set, so replays stay apart.
    test._hypothesis_internal_add_digest = "|".join(
        [arch] + [f"{w.label}:{','.join(w.spec.patches)}" for w in session.engines]).encode()
    try:
        test()
    except _Failed as failure:
        session.mark_minimal(failure.example_id)
        return failure.example_id
    except _Unsupported:
        pass
    return None


class _Unsupported(Exception):
    """Stops the search at the first example when no backend can run the architecture."""


def _setup_hint(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, WorkerError) and ("ModuleNotFoundError" in text or "ImportError" in text):
        return (f"{exc.label}: the interpreter cannot import its engine ({exc.reason}). "
                f"Point --backend NAME=PYTHON at an environment with the engine installed, "
                f"or omit =PYTHON to let parity build one.\n{exc.log_tail}")
    return text


def run(cfg: RunConfig, archs: list[str], profile: Profile) -> Report:
    with Session(cfg) as session:
        try:
            for arch in archs:
                session.log(f"parity: searching {arch} ({profile.name} profile, {profile.max_examples} examples)")
                minimal = search(session, arch, profile, cfg.seed)
                if minimal:
                    session.log(f"parity: {arch}: minimal failing example {session.records[minimal].description}\n"
                                f"        replay: {session.records[minimal].replay}")
        except KeyboardInterrupt:
            report_mod.write(session.report(complete=False), cfg.out, render=True)
            session.log(f"parity: interrupted; {len(session.records)} finished examples kept in {cfg.out}/report.json")
            raise
        return session.write(complete=True)


def replay(cfg: RunConfig, example: Example) -> Report:
    with Session(cfg) as session:
        session.evaluate(example, role="replay")
        return session.write(complete=True)


def parse_backends(texts: list[str], patches: list[str]) -> list[BackendSpec]:
    specs = [backends_mod.parse(t) for t in texts]
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise backends_mod.BackendUsageError(f"backend label(s) {', '.join(dupes)} given twice; "
                                             f"name installs apart with NAME@LABEL, e.g. vllm@pr=/pr/bin/python")
    if "reference" in labels:
        raise backends_mod.BackendUsageError("the label 'reference' is reserved for the transformers reference")
    return backends_mod.attach_patches(specs, patches)
