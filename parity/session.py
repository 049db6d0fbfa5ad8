"""A session: the reference's and every backend's worker, and the flow of one example
through them. Checkpoint (written by the reference worker) -> every request sent ->
replies collected -> :func:`parity.judge.judge` -> record -> report.

Workers are started through ``launch``: real worker processes by default, a fake
in the orchestrator's unit tests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import parity
from parity import (checkpoint_cache, compare, diagnosis, envs, interrupts, judge, known_issues, registry, support,
                    surface)
from parity import report as report_mod
from parity.backends import BackendSpec
from parity.example import Example
from parity.pool import Worker, WorkerError, WorkerHandle
from parity.records import BackendInfo, BackendResult, ExampleRecord, Report, SurfaceCoverage
from parity.summary import summarize
from parity.worker.contract import CheckpointRequest, ReleaseRequest, RunReply, RunRequest


class HarnessError(RuntimeError):
    """Parity itself cannot go on (exit code 2): setup failed or the reference broke."""


class PatchError(HarnessError):
    """A ``--patch`` file failed to apply in its worker."""

    def __init__(self, message: str, traceback: str):
        super().__init__(message)
        self.traceback = traceback


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
    keep_activations: bool = False
    """Keep every example's captures under ``out/activations``; by default only failing examples' are kept (about
    12 MB an example: a nightly's would fill a disk), the rest replay from the report."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


Launch = Callable[[BackendSpec], WorkerHandle]


class Session:
    """Workers for the reference and every backend, and the results of one run."""

    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = _log, launch: Launch | None = None):
        self.cfg = cfg
        self.log = log
        self.cache = envs.cache_dir()
        self.launch = launch or self._launch
        self.records: dict[str, ExampleRecord] = {}
        self.workers: dict[str, WorkerHandle] = {}
        self._saved = (-float("inf"), 0.0)  # when report.json was last written, and what writing it cost
        self._releasing: set[str] = set()  # engine workers tearing down their engine after the last example

    # -- lifecycle -------------------------------------------------------

    def _launch(self, spec: BackendSpec) -> Worker:
        python = spec.python or str(envs.ensure(spec.definition, self.cfg.device, self.log))
        return Worker(spec, python, self.cfg.device, self.cfg.out / "logs", self.cache)

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
                self.workers[spec.label] = self.launch(spec)
            self.log(f"parity: starting {', '.join(self.workers)} workers")
            for w in self.workers.values():  # in turn: two engine imports at once only thrash 2 cores
                t0 = time.monotonic()
                caps = w.start()
                self.log(f"parity:   {w.label}: {caps.engine} {caps.versions_text} "
                         f"({w.python}, {time.monotonic() - t0:.1f}s)")
                if self.cfg.dtype not in caps.dtypes:  # every example will say so, as unsupported
                    self.log(f"parity:   {w.label}: {self.cfg.dtype} unsupported: "
                             f"{caps.unsupported_dtypes.get(self.cfg.dtype, 'not among its dtypes')}")
            if self.cfg.dtype not in self.reference.capabilities.dtypes:
                raise HarnessError(f"the reference does not run {self.cfg.dtype}")
        except (WorkerError, envs.EnvBuildError) as exc:
            self.close()
            raise _setup_error(exc) from None
        except BaseException:
            self.close()
            raise
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
        self.settle(restart=False)  # its reply first, so the worker is asked to shut down, not killed
        for w in self.workers.values():
            w.stop()

    def settle(self, restart: bool = True) -> dict[str, str]:
        """Take the replies of the releases sent after the last example, before anything else is asked of those
        workers; a worker that could not tear its engine down is restarted. The failures, by label."""
        failed = {}
        for w in self.engines:
            if w.label in self._releasing:
                self._releasing.discard(w.label)
                try:
                    w.receive(self.cfg.timeout)
                except WorkerError as exc:
                    if restart:
                        failed[w.label] = f"tearing down the previous example's engine: {self._failure(w, exc)}"
        return failed

    @property
    def reference(self) -> WorkerHandle:
        return self.workers[self.cfg.reference.label]

    @property
    def engines(self) -> list[WorkerHandle]:
        return [self.workers[s.label] for s in self.cfg.backends]

    # -- one example ------------------------------------------------------

    def known(self, example: Example) -> ExampleRecord | None:
        return self.records.get(example.id)

    def evaluate(self, example: Example, role: str = "generated") -> ExampleRecord:
        interrupts.check()
        if example.id in self.records:
            return self.records[example.id]
        t0 = time.monotonic()
        ckpt = self._checkpoint(example)
        t_ckpt = time.monotonic()
        acts = self.cfg.out / "activations" / example.id
        acts.mkdir(parents=True, exist_ok=True)

        request = functools.partial(_request, example, ckpt)
        failed: dict[str, BackendResult] = {}  # unsupported or errored, by label
        runnable: list[WorkerHandle] = []
        t_settle = time.monotonic()
        released = self.settle()
        t_settled = time.monotonic()
        for w in self.engines:
            reason = support.supports(w.capabilities, example.arch, example.config, self.cfg.dtype,
                                      example.execution)
            if reason:
                failed[w.label] = BackendResult(backend=w.label, status="unsupported", reason=reason)
            elif w.label in released:
                failed[w.label] = BackendResult(backend=w.label, status="error", reason=released[w.label])
            else:
                runnable.append(w)
        # Backends run concurrently: every request goes out before any reply is awaited.
        ref_files = self._reference_files(acts, "")
        for d, f in ref_files.items():
            self.reference.submit(request(d, f))
        for w in runnable:
            w.submit(request(self.cfg.dtype, acts / f"{w.label}.safetensors"))
        reference = self._reference(example, ref_files, runnable, request)
        t_ref = time.monotonic()
        captured: dict[str, Any] = {}
        seconds: dict[str, dict[str, float]] = {}
        reused: set[str] = set()
        for w in runnable:
            try:
                reply: RunReply = w.receive(self.cfg.timeout)
                t1 = time.monotonic()
                captured[w.label] = load_file(reply.file)
                seconds[w.label] = {**reply.seconds, "wait": t1 - t_ckpt, "transfer": time.monotonic() - t1}
                if reply.reused:
                    reused.add(w.label)
            except (WorkerError, ValueError) as exc:
                failed[w.label] = BackendResult(backend=w.label, status="error", reason=self._failure(w, exc))
                continue
            if role == "generated":
                self._release(w)
        t_forced = time.monotonic()
        forced = self._teacher_forced(example, reference, captured, acts, request)
        t_judge = time.monotonic()
        routing = routers(ckpt, example.config)
        outcomes = [*(judge.Outcome((label,), r) for label, r in failed.items()),
                    *judge.judge(judge.Captures(reference, captured, forced, routing), self.cfg.dtype)]
        engines = {w.label: (w.capabilities.engine, w.capabilities.engine_version) for w in self.engines}
        verdicts = self._verdicts(example, ckpt, acts, captured, engines, routing)
        lengths = [len(p) for p in example.prompts]
        judged = {o.backends: diagnosis.diagnose(o.result, judge.candidates(o, engines, example.arch, example.config,
                                                                            lengths), verdicts)
                  for o in outcomes}
        judged.update({backends: judge.inherit(r, [judged[(b,)] for b in backends])
                       for backends, r in judged.items() if len(backends) == 2})
        results = [judged[(w.label,)].model_copy(update={"seconds": _rounded(seconds.get(w.label, {})),
                                                         "reused": w.label in reused})
                   for w in self.engines] + [r for backends, r in judged.items() if len(backends) == 2]
        record = ExampleRecord(
            id=example.id, arch=example.arch, role=role, description=example.describe(), config=example.config,
            weight_seed=example.weight_seed, prompts=[list(p) for p in example.prompts],
            decode_steps=example.decode_steps, execution=example.to_json().get("execution", {}),
            replay=f"parity replay {shlex.quote(str(self.cfg.out / 'report.json'))} {example.id}",
            results=results,
            seconds=_rounded({"checkpoint": t_ckpt - t0, "released": t_settled - t_settle, "reference": t_ref - t_ckpt,
                              "teacher_forced": t_judge - t_forced,
                              "compare": time.monotonic() - t_judge, "total": time.monotonic() - t0}),
        )
        self.records[example.id] = record
        self._progress(record, time.monotonic() - t0)
        if not (record.failed or self.cfg.keep_activations):
            shutil.rmtree(acts, ignore_errors=True)
        self._save_now_and_then()
        interrupts.check()
        return record

    def _save_now_and_then(self) -> None:
        """Rewrite report.json, so that a killed run keeps its examples (``--resume``), but no more often than
        keeps its cost under a tenth of the run: a nightly's grows to hundreds of MB (1.8 s a write at 1,362
        examples). An interrupt or an error writes it whatever the time (``search.run``)."""
        at, cost = self._saved
        if time.monotonic() - at >= 10 * cost:
            t0 = time.monotonic()
            self.write(complete=False)
            self._saved = (time.monotonic(), time.monotonic() - t0)

    def _release(self, worker: WorkerHandle) -> None:
        """Have ``worker`` tear its engine down while this example is judged and the next drawn and written: a
        drawn example seldom shares an engine's structure with the one before it (a shrinking search's retries
        do, and keep theirs), and a teardown put off to the next request delays its load."""
        try:
            worker.submit(ReleaseRequest())
        except WorkerError:  # it died after its reply: the next example needs it running
            self._recover(worker)
        else:
            self._releasing.add(worker.label)

    def _checkpoint(self, example: Example) -> Path:
        ckpt = self.cache / "checkpoints" / example.checkpoint_id
        write = CheckpointRequest(config=example.config, seed=example.weight_seed, dir=str(ckpt))
        try:
            return checkpoint_cache.ensure(ckpt, lambda: self.reference.call(write, self.cfg.timeout), self.log)
        except (WorkerError, checkpoint_cache.CorruptCheckpoint) as exc:
            raise HarnessError(f"the reference could not build {example.describe()}: {exc}") from None

    def _reference_files(self, acts: Path, along: str) -> dict[str, Path]:
        return {d: acts / f"reference-{d}{along}.safetensors" for d in ("float64", self.cfg.dtype)}

    def _receive_reference(self, example: Example, files: dict[str, Path],
                           runnable: list[WorkerHandle]) -> dict[str, dict[str, Any]]:
        """The reference's replies to requests already sent, one per file, loaded by dtype."""
        try:
            replies: list[RunReply] = [self.reference.receive(self.cfg.timeout) for _ in files]
        except WorkerError as exc:
            self._recover(self.reference)
            for w in runnable:  # their replies are still in flight
                self._drain(w)
            raise HarnessError(f"the reference failed on {example.describe()}: {exc}") from None
        exact = dict(zip(files, replies)).get("float64")
        if exact and exact.non_finite:
            raise HarnessError(f"the fp64 reference is non-finite on {example.describe()}: {exact.non_finite[:3]}")
        return {d: load_file(f) for d, f in files.items()}

    def _reference(self, example: Example, files: dict[str, Path], runnable: list[WorkerHandle],
                   request: Callable[[str, Path, compare.Trajectory], RunRequest]) -> judge.Reference:
        """The fp64 reference along its own greedy tokens, and each tensor's noise floor (parity/tolerance.py).

        Where the low-precision reference's own greedy tokens part from fp64's (an argmax near-tie, common
        in bf16), it is run again teacher-forced along fp64's, so every step has a floor.
        """
        got = self._receive_reference(example, files, runnable)
        exact, low = got["float64"], got[self.cfg.dtype]
        tokens = compare.decode_tokens(exact, len(example.prompts), example.decode_steps)
        if compare.decode_tokens(low, len(example.prompts), example.decode_steps) != tokens:
            out = self._reference_files(files["float64"].parent, "-along-float64")[self.cfg.dtype]
            self.reference.submit(request(self.cfg.dtype, out, tokens))
            low = self._receive_reference(example, {self.cfg.dtype: out}, runnable)[self.cfg.dtype]
        return judge.Reference(exact, compare.floors(low, exact), tokens)

    def _teacher_forced(self, example: Example, reference: judge.Reference, captured: dict[str, Any], acts: Path,
                        request: Callable[[str, Path, compare.Trajectory], RunRequest]) -> dict[str, judge.Reference]:
        """For each backend whose greedy tokens part from the reference's: the reference (fp64 and the dtype
        under test) teacher-forced along that backend's tokens; one run per distinct trajectory."""
        along: dict[compare.Trajectory, judge.Reference] = {}
        forced: dict[str, judge.Reference] = {}
        parted = judge.parted(reference.tokens, captured, len(example.prompts), example.decode_steps,
                              example.config.get("vocab_size", 0))
        for label, tokens in parted.items():
            if tokens not in along:
                files = self._reference_files(acts, f"-along-{label}")
                for d, f in files.items():
                    self.reference.submit(request(d, f, tokens))
                got = self._receive_reference(example, files, [])
                along[tokens] = judge.Reference(got["float64"], compare.floors(got[self.cfg.dtype], got["float64"]),
                                                tokens)
            forced[label] = along[tokens]
        return forced

    def _verdicts(self, example: Example, ckpt: Path, acts: Path, captured: Mapping[str, Any],
                  engines: Mapping[str, tuple[str, str]], routing: Mapping[int, compare.Router]
                  ) -> Callable[[known_issues.Match], diagnosis.Verdict]:
        """Each engine's known issues on this example tested (:mod:`parity.diagnosis`): the fp64 reference run
        on the checkpoint's config as the engine reads it, and the engine's captures compared with that run.
        One verdict per engine, shared by its result and its pairs' results."""
        config = json.loads((ckpt / "config.json").read_text())
        found: dict[tuple[str, str], diagnosis.Verdict] = {}
        runs: dict[Path, tuple[dict[str, Any], dict[str, float]] | str] = {}  # engines may misread alike

        def test(label: str, issues: list[known_issues.KnownIssue]) -> str | None:
            rewritten = config
            for issue in issues:
                rewritten = issue.reads_as(rewritten) if issue.reads_as else rewritten
            run = self._as_read(example, ckpt, acts, rewritten, [p for i in issues for p in i.ignores], runs)
            if isinstance(run, str):
                return f"the reference cannot run the checkpoint as the engine reads it: {run}"
            _, first, _ = compare.compare(captured[label], *run, self.cfg.dtype, routers=routing)
            if first is None:
                return None
            return (f"{label} also diverges from the reference run on the checkpoint as it reads it, at {first.tensor} "
                    f"(step {first.step}, prompt {first.prompt}; relative L2 {first.rel_l2:.2e})")

        def verdicts(match: known_issues.Match) -> diagnosis.Verdict:
            engine = (match.engine, match.version)
            if engine not in found:
                label = next((lb for lb, ev in engines.items() if ev == engine and lb in captured), None)
                last = max(len(p) for p in example.prompts) + example.decode_steps - 1
                applies = known_issues.applicable(*engine, example.arch, example.config, last)
                found[engine] = (diagnosis.Verdict("matched") if label is None else
                                 diagnosis.verdict(applies, lambda issues: test(label, issues)))
            return found[engine]

        return verdicts

    def _as_read(self, example: Example, ckpt: Path, acts: Path, config: dict[str, Any], ignored: list[str],
                 runs: dict[Path, tuple[dict[str, Any], dict[str, float]] | str]
                 ) -> tuple[dict[str, Any], dict[str, float]] | str:
        """The fp64 reference's tensors and their noise floors on ``ckpt`` read another way: under ``config`` and
        without the tensors matching ``ignored``; or why the reference could not run it. Run once per reading
        (``runs``, the example's)."""
        read = json.dumps([config, ignored], sort_keys=True).encode()
        where = acts / ("as-read-" + hashlib.sha256(read).hexdigest()[:12])
        if where not in runs:
            runs[where] = self._run_as_read(example, ckpt, where, config, ignored)
        return runs[where]

    def _run_as_read(self, example: Example, ckpt: Path, where: Path, config: dict[str, Any],
                     ignored: list[str]) -> tuple[dict[str, Any], dict[str, float]] | str:
        where.mkdir(exist_ok=True)
        (where / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        weights = where / "model.safetensors"
        if ignored and not weights.exists():
            kept = {k: v for k, v in load_file(ckpt / "model.safetensors").items()
                    if not any(re.search(p, k) for p in ignored)}
            save_file(kept, weights, metadata={"format": "pt"})
        elif not weights.exists():
            weights.symlink_to(ckpt / "model.safetensors")
        files = self._reference_files(where, "")
        for d, f in files.items():
            self.reference.submit(_request(example, where, d, f))
        try:
            got = self._receive_reference(example, files, [])
        except HarnessError as exc:
            return str(exc)
        return got["float64"], compare.floors(got[self.cfg.dtype], got["float64"])

    def _failure(self, worker: WorkerHandle, exc: Exception) -> str:
        """The reason of a backend's error result; a worker that cannot serve on is restarted."""
        if not isinstance(exc, WorkerError):
            return str(exc)
        if not exc.usable:
            self._recover(worker)
        return exc.reason + "\n" + "\n".join(exc.log_tail.splitlines()[-12:])

    def _recover(self, worker: WorkerHandle) -> None:
        try:
            worker.restart()
        except WorkerError as exc:
            raise HarnessError(f"{worker.label} could not be restarted: {exc}") from None

    def _drain(self, worker: WorkerHandle) -> None:
        try:
            worker.receive(self.cfg.timeout)
        except WorkerError as exc:
            if not exc.usable:
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

    def info(self, w: WorkerHandle) -> BackendInfo:
        return BackendInfo(label=w.label, engine=w.capabilities.engine, python=w.python,
                           versions=w.capabilities.versions, patches=list(w.spec.patches))

    def report(self, complete: bool) -> Report:
        examples = list(self.records.values())
        return Report(
            parity_version=parity.__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=self.cfg.command, profile=self.cfg.profile, seed=self.cfg.seed, device=self.cfg.device,
            dtype=self.cfg.dtype, complete=complete, reference=self.info(self.reference),
            backends=[self.info(w) for w in self.engines], examples=examples,
            summary=summarize(examples),
            surface=self.surface_coverage(sorted({e.arch for e in examples}), examples),
        )

    def surface_coverage(self, archs: list[str], examples: list[ExampleRecord] = ()) -> dict[str, SurfaceCoverage]:
        """Config-surface coverage for the reference's transformers version (memoized: it samples the
        strategies, which Hypothesis refuses inside a running search, so a search asks first), and what
        ``examples`` exercised of it."""
        configs: dict[str, list[dict[str, Any]]] = {}
        for ex in examples:
            configs.setdefault(ex.arch, []).append(ex.config)
        return surface.coverage(archs, self.reference.capabilities.versions.get("transformers", ""), configs)

    def write(self, complete: bool, render: bool | None = None) -> Report:
        """The report so far; Markdown and HTML only once complete, or when asked (an interrupt)."""
        rep = self.report(complete)
        report_mod.write(rep, self.cfg.out, render=complete if render is None else render)
        return rep


_SELECTION_BIAS = re.compile(r"\blayers\.(\d+)\..*\.e_score_correction_bias$")


def routers(ckpt: Path, config: Mapping[str, Any]) -> dict[int, compare.Router]:
    """Each layer's router where it chooses by sigmoid scores plus the checkpoint's correction bias
    (``judge.Captures.routers``), within the config's expert groups (transformers' names, for every model that
    routes so)."""
    with safe_open(ckpt / "model.safetensors", framework="numpy") as weights:
        return {int(m.group(1)): compare.Router(weights.get_tensor(name), config.get("n_group") or 1,
                                                config.get("topk_group") or 1)
                for name in weights.keys() if (m := _SELECTION_BIAS.search(name))}


def _request(example: Example, ckpt: Path, dtype: str, out: Path, forced: compare.Trajectory = ()) -> RunRequest:
    return RunRequest(checkpoint=str(ckpt), prompts=[list(p) for p in example.prompts],
                      decode_steps=example.decode_steps, dtype=dtype, out=str(out),
                      modules=asdict(registry.get(example.arch).modules), forced=[list(t) for t in forced],
                      execution=example.execution)


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in seconds.items()}


def _setup_error(exc: Exception) -> HarnessError:
    if isinstance(exc, WorkerError) and exc.kind == "PatchFailed":
        return PatchError(f"{exc.label}: {exc.reason.removeprefix('PatchFailed: ')}", exc.log_tail)
    if isinstance(exc, WorkerError) and exc.kind in ("ModuleNotFoundError", "ImportError"):
        return HarnessError(f"{exc.label}: the interpreter cannot import its engine ({exc.reason}). "
                            f"Point --backend NAME=PYTHON at an environment with the engine installed, "
                            f"or omit =PYTHON to let parity build one.\n{exc.log_tail}")
    return HarnessError(str(exc))


def replay(cfg: RunConfig, examples: list[Example]) -> Report:
    """Run exactly these examples (``parity replay``; ``parity pr``'s candidate, on the baseline's examples)."""
    with Session(cfg) as session:
        for example in examples:
            session.evaluate(example, role="replay")
        return session.write(complete=True)
