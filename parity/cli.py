"""Command line: parse, hand off, map outcomes to exit codes.

Exit codes: 0 every backend agrees with the reference; 1 a divergence or an
engine error was found; 2 usage or harness error (nothing was concluded);
130 interrupted (finished examples are kept in the report). ``parity gate`` and ``parity pr``:
0 no regression, 1 a regression against the baseline, 2 unreadable or incomparable reports
(``parity pr``: a change it refuses). ``parity merge`` and ``parity repro``: 0 written, 2 refused.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from parity import __version__, change, envs, gate, generic_tier, interrupts, pr, profiles, registry, repro, support, surface
from parity import report as report_mod
from parity.backends import BACKENDS, BackendSpec, BackendUsageError, parse, parse_backends
from parity.example import Example
from parity.pool import Worker, WorkerError
from parity.records import Report
from parity.search import run
from parity.session import HarnessError, PatchError, RunConfig, Session, replay
from parity.summary import merge

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _common(p: argparse.ArgumentParser, report: bool = False) -> None:
    """The options every command that runs engines takes; ``report``: device and dtype default to a report's."""
    p.add_argument("--device", choices=["cpu", "cuda"], default=None if report else "cpu",
                   help="where engines run; cuda is untested on a GPU. Default: "
                        + ("the report's" if report else "%(default)r"))
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None if report else "float32",
                   help="dtype of the engines and of the low-precision reference. Default: "
                        + ("the report's" if report else "%(default)r"))
    p.add_argument("--reference", metavar="PYTHON", default=None,
                   help="interpreter with transformers for the reference (default: parity's managed environment)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="per-request limit for a worker before it is killed. Default: %(default)r")
    p.add_argument("--verbose", action="store_true",
                   help="with an error that stops the run, also print the worker's traceback")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"parity {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="search generated configs for divergences between backends and transformers")
    run.add_argument("--arch", action="append", metavar="NAME",
                     help=f"architecture to test (repeatable). Default: all of {', '.join(registry.ARCHITECTURES)}")
    _tier(run)
    run.add_argument("--backend", action="append", metavar="NAME[@LABEL][=PYTHON]",
                     help=f"backend to test (repeatable); NAME in {', '.join(b for b in BACKENDS if b != 'transformers')} "
                          "(or transformers, to test a patched reference); =PYTHON uses your own environment. Default: vllm")
    run.add_argument("--patch", action="append", default=[], metavar="LABEL=FILE",
                     help="run FILE inside that backend's worker after the engine is imported, before any model is built")
    run.add_argument("--examples", type=int, metavar="N", help="examples per architecture (overrides the profile)")
    run.add_argument("--profile", choices=list(profiles.PROFILES), default=profiles.DEFAULT,
                     help="search effort. Default: %(default)r (env PARITY_PROFILE)")
    run.add_argument("--seed", type=int, help="Hypothesis seed. Default: ci, the UTC date (YYYYMMDD, rotating daily); "
                          "other profiles, random")
    run.add_argument("--out", type=Path, default=Path("reports/latest"), help="report directory. Default: %(default)s")
    run.add_argument("--keep-activations", action="store_true",
                     help="keep every example's captures under OUT/activations (default: failing examples' only)")
    run.add_argument("--resume", action="store_true",
                     help="reuse the finished examples of an interrupted run's report in --out")
    _common(run)

    rep = sub.add_parser("replay", help="re-run one example of a report exactly")
    rep.add_argument("report", type=Path)
    rep.add_argument("example", help="example id (see the report)")
    rep.add_argument("--out", type=Path, help="report directory. Default: <report dir>/replay-<id>")
    _common(rep, report=True)

    gate = sub.add_parser("gate", help="exit 1 if a candidate run regressed against a baseline run of the same examples",
                          description="Rule: see parity/gate.py. Exit 0 no regression, 1 regression, "
                                      "2 unreadable or incomparable reports.")
    gate.add_argument("--baseline", type=Path, required=True, metavar="REPORT", help="baseline report.json (or its directory)")
    gate.add_argument("--candidate", type=Path, required=True, metavar="REPORT", help="candidate report.json (or its directory)")

    prg = sub.add_parser("pr", help="gate an engine change to Python files on the pinned build, without building it",
                         description="Overlays the change's Python files onto parity's pinned build of the engine "
                                     "(its environment is not modified), picks the families the change can affect, "
                                     "searches them on the build with the files before the change and runs the same "
                                     "examples with the files after it, then gates. Exit 0 no regression (or no "
                                     "family affected), 1 regression, 2 refused: compiled sources, a far version, "
                                     "bad input.")
    prg.add_argument("engine", metavar="NAME[=PYTHON]", help="engine (vllm, sglang); =PYTHON: your own install to overlay")
    what = prg.add_mutually_exclusive_group(required=True)
    what.add_argument("--range", metavar="BASE..HEAD", help="the change: a git range of --checkout")
    what.add_argument("--diff", type=Path, metavar="FILE", help="the change: a unified diff (git diff, diff -u)")
    prg.add_argument("--reverse", action="store_true", help="gate the change undone (a revert of it)")
    prg.add_argument("--checkout", type=Path, metavar="DIR", help="git checkout of the engine (with --range)")
    prg.add_argument("--path", action="append", default=[], metavar="PATH",
                     help="limit --range to these paths of the checkout (repeatable)")
    prg.add_argument("--arch", action="append", metavar="NAME",
                     help="only these families, among those the change can affect (repeatable)")
    prg.add_argument("--examples", type=int, metavar="N", help="examples per architecture (overrides the profile)")
    prg.add_argument("--profile", choices=list(profiles.PROFILES), default="ci",
                     help="search effort (ci: seeded by the UTC date). Default: %(default)r")
    prg.add_argument("--seed", type=int, help="Hypothesis seed. Default: the profile's (ci: the UTC date)")
    prg.add_argument("--out", type=Path, default=Path("reports/pr"),
                     help="directory for baseline/, candidate/, overlay/ and report.md. Default: %(default)s")
    _common(prg)

    bundle = sub.add_parser("repro", help="write one example as a folder that reproduces it without parity",
                            description="The folder holds config.json, the weight seed and prompts, a script that "
                                        "rebuilds the checkpoint and run.py, which runs transformers and the engine "
                                        "and prints the first divergent layer; it needs only the engine's environment.")
    bundle.add_argument("report", type=Path, help="report.json (or its directory)")
    bundle.add_argument("example", help="example id (see the report)")
    bundle.add_argument("--backend", required=True, metavar="LABEL", help="the backend's label in the report")
    bundle.add_argument("--out", type=Path, help="bundle directory. Default: <report dir>/repro-<id>-<label>")

    shards = sub.add_parser("merge", help="merge the reports of one run split over machines or shards into one",
                           description="Refuses (exit 2) reports that are not parts of one run: other engines or "
                                       "versions, reference, device, dtype, profile or seed. Exit 0 once written.")
    shards.add_argument("out", type=Path, help="directory for the merged report.json, report.md and report.html")
    shards.add_argument("reports", type=Path, nargs="+", metavar="REPORT", help="report.json files (or their directories)")

    archs = sub.add_parser("archs", help="list the architecture registry; with --backend, the support matrix")
    archs.add_argument("--backend", action="append", metavar="NAME[@LABEL][=PYTHON]",
                       help="also start these backends' workers and ask each engine what it supports (repeatable)")
    _common(archs)
    gen = sub.add_parser("generic", help="list the architectures transformers and the engines all implement, and "
                                         "the generic tier's tiny config for those without a registry entry",
                         description="Starts the reference and the --backend workers (default: vllm and sglang).")
    gen.add_argument("--backend", action="append", metavar="NAME[@LABEL][=PYTHON]",
                     help="engines whose registered architectures count (repeatable)")
    gen.add_argument("--write", action="store_true",
                     help=f"store the table in {registry.GENERIC_TABLE.relative_to(Path(__file__).parent.parent)} "
                          "(what runs draw the generic tier from)")
    _common(gen)
    surf = sub.add_parser("surface", help="measure each family's config surface: what the reference reads, "
                                          "what changes its output, what the strategies vary",
                          description="Exit 0 when every key read is varied, pinned with a reason or measured "
                                      "neutral; 1 when some key is none of these (a blind spot).")
    surf.add_argument("--arch", action="append", metavar="NAME",
                      help="architecture (repeatable). Default: every architecture of --tier")
    _tier(surf)
    surf.add_argument("--seed", type=int, default=0, help="seed of the probe draws. Default: %(default)r")
    surf.add_argument("--json", type=Path, metavar="FILE", help="also write the measured surfaces as JSON")
    surf.add_argument("--write", action="store_true",
                      help="store the measured effects in parity/measured/ for this transformers version "
                           "(what reports compute their coverage from)")
    surf.add_argument("--all-keys", action="store_true",
                      help="list every key read, not only blind spots, pins and keys whose drawn values do not act")
    _common(surf)
    sub.add_parser("schema", help="print the JSON schema of report.json")
    env = sub.add_parser("env", help="build (or find) parity's managed environment for a backend and print its python")
    env.add_argument("backend", choices=list(BACKENDS))
    env.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    interrupts.install()  # SIGTERM (CI cancelling a job) cleans up like Ctrl-C: workers stopped, report kept
    try:
        return COMMANDS[args.command](args, argv)
    except (BackendUsageError, registry.UnknownArchitecture, ValueError) as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:  # a full disk, say; a run has kept what it finished (search.run)
        print(f"parity: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _harness(fn, args: argparse.Namespace):
    try:
        return fn()
    except HarnessError as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        if isinstance(exc, PatchError) and args.verbose:
            print(exc.traceback, file=sys.stderr)
        return None


def _reference(args: argparse.Namespace) -> BackendSpec:
    return parse(f"transformers@reference={args.reference}" if args.reference else "transformers@reference")


def _exit_code(report) -> int:
    return EXIT_DIVERGED if report.summary.failing else EXIT_OK


TIERS = ("full", "generic", "all")


def _tier(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tier", choices=TIERS, default="full",
                        help="without --arch, which architectures: the registry's (full), those derived from "
                             "transformers' config classes (generic, see `parity generic`), or all. "
                             "Default: %(default)s")


def _archs(args: argparse.Namespace) -> list[str]:
    """``--arch`` options, each checked (default: every architecture of ``--tier``)."""
    tier = getattr(args, "tier", "full")
    archs = args.arch or [*(registry.ARCHITECTURES if tier != "generic" else ()),
                          *(registry.generic_entries() if tier != "full" else ())]
    for a in archs:
        registry.get(a)
    return archs


def _profile(args: argparse.Namespace) -> profiles.Profile:
    profile = profiles.get(args.profile)
    if args.examples is not None:
        if args.examples < 1:
            raise ValueError(f"--examples must be at least 1, got {args.examples}")
        profile = replace(profile, max_examples=args.examples)
    return profile


def _seed(args: argparse.Namespace, profile: profiles.Profile) -> int | None:
    """``--seed``, else the profile's (ci: the seed of the day, said on stderr)."""
    if args.seed is not None:
        return args.seed
    seed = profile.seed()
    if seed is not None:
        print(f"parity: seed {seed} (the {profile.name} profile's seed of the day; --seed N pins another)",
              file=sys.stderr)
    return seed


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    archs = _archs(args)
    profile = _profile(args)
    seed = _seed(args, profile)
    cfg = RunConfig(backends=parse_backends(args.backend or ["vllm"], args.patch), reference=_reference(args),
                    device=args.device, dtype=args.dtype, out=args.out, timeout=args.timeout,
                    command=shlex.join(["parity", *argv]), profile=profile.name, seed=seed,
                    resume=args.resume, keep_activations=args.keep_activations)
    report = _harness(lambda: run(cfg, archs, profile), args)
    if report is None:
        return EXIT_USAGE
    print(f"parity: report written to {args.out}/report.json and report.md", file=sys.stderr)
    return _exit_code(report)


def cmd_replay(args: argparse.Namespace, argv: list[str]) -> int:
    old = report_mod.read(args.report)
    match = [e for e in old.examples if e.id == args.example]
    if not match:
        raise ValueError(f"no example {args.example!r} in {args.report}; it holds "
                         + ", ".join(e.id for e in old.examples[:10]))
    example = Example.from_json(match[0].model_dump())
    specs = [BackendSpec(b.engine, b.label, b.python, tuple(b.patches)) for b in old.backends]
    cfg = RunConfig(backends=specs, reference=_reference(args), device=args.device or old.device,
                    dtype=args.dtype or old.dtype, out=args.out or args.report.parent / f"replay-{example.id}",
                    timeout=args.timeout,
                    command=shlex.join(["parity", *argv]), profile=old.profile, seed=old.seed, keep_activations=True)
    report = _harness(lambda: replay(cfg, [example]), args)
    if report is None:
        return EXIT_USAGE
    for r in report.examples[0].results:
        d = r.first_divergence
        print(f"{r.backend}: {r.status}" + (f" at {d.tensor} (step {d.step}, rel. L2 {d.rel_l2:.2e})" if d else "")
              + (f" — {r.reason.splitlines()[0]}" if r.reason else ""))
    return _exit_code(report)


def cmd_gate(args: argparse.Namespace, argv: list[str]) -> int:
    result = gate.gate(report_mod.read(args.baseline), report_mod.read(args.candidate))
    print(gate.render(result, str(args.baseline), str(args.candidate)))
    return EXIT_DIVERGED if result.regressed else EXIT_OK


def cmd_pr(args: argparse.Namespace, argv: list[str]) -> int:
    archs = _archs(args) if args.arch else None
    spec = parse(args.engine)
    package = spec.definition.repo_package
    if package is None:
        raise ValueError(f"{spec.name} is no engine with a repository layout parity knows; use vllm or sglang")
    if args.range and args.checkout is None:
        raise ValueError("--range needs --checkout DIR, the engine's git checkout")
    profile = _profile(args)
    try:
        python = spec.python or str(envs.ensure(spec.definition, args.device, lambda m: print(m, file=sys.stderr)))
    except envs.EnvBuildError as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parent, version = pr.installed(python, Path(package).name)
    the_change = (change.from_range(args.checkout, args.range, package, version, args.path) if args.range
                  else change.from_diff(args.diff, package, parent, version))
    if args.reverse:
        the_change = change.reversed_change(the_change)
    if not the_change.files:
        print(f"parity: the change touches no Python file of {spec.name}'s package: nothing to gate", file=sys.stderr)
        return EXIT_OK
    cfg = RunConfig(backends=[replace(spec, python=python)], reference=_reference(args), device=args.device,
                    dtype=args.dtype, out=args.out, timeout=args.timeout, command=shlex.join(["parity", *argv]),
                    profile=profile.name, seed=_seed(args, profile))
    outcome = _harness(lambda: pr.gate_change(cfg, the_change, archs, profile,
                                              lambda m: print(m, file=sys.stderr, flush=True)), args)
    if outcome is None:
        return EXIT_USAGE
    print(outcome.markdown)
    print(f"parity: PR comment in {args.out}/report.md", file=sys.stderr)
    return EXIT_DIVERGED if outcome.result and outcome.result.regressed else EXIT_OK


def cmd_repro(args: argparse.Namespace, argv: list[str]) -> int:
    report = report_mod.read(args.report)
    directory = args.report if args.report.is_dir() else args.report.parent
    out = repro.write(report, args.example, args.backend, args.out or directory / f"repro-{args.example}-{args.backend}")
    python = next(b.python for b in report.backends if b.label == args.backend)
    print(f"parity: repro bundle written to {out}; run it with: {shlex.quote(python)} {shlex.quote(str(out / 'run.py'))}")
    return EXIT_OK


def cmd_merge(args: argparse.Namespace, argv: list[str]) -> int:
    merged = merge([report_mod.read(p) for p in args.reports], command=shlex.join(["parity", *argv]))
    report_mod.write(merged, args.out)
    print(f"parity: {len(args.reports)} reports, {merged.summary.examples} examples merged into {args.out}/report.json",
          file=sys.stderr)
    return EXIT_OK


def cmd_archs(args: argparse.Namespace, argv: list[str]) -> int:
    width = max(map(len, [*registry.ARCHITECTURES, *registry.generic_entries()]))
    for name, spec in registry.ARCHITECTURES.items():
        features = registry.possible_features(spec)
        print(f"{name:{width}} {spec.architecture:28} layers {spec.layers[0]}-{spec.layers[1]}, head_dim {spec.head_dims}, "
              f"partial_rotary {spec.partial_rotary_factors}, rope {'/'.join(spec.rope_types)}"
              + (f", features {', '.join(features)}" if features else ""))
    for name, spec in registry.generic_entries().items():
        print(f"{name:{width}} {spec.architecture:28} generic: embed, residual, final norm and logits; "
              f"sizes {', '.join(spec.sizes)} drawn, other keys at their config class's defaults")
    if not args.backend:
        return EXIT_OK
    with tempfile.TemporaryDirectory(prefix="parity-archs-") as out:
        cfg = RunConfig(backends=parse_backends(args.backend, []), reference=_reference(args), device=args.device,
                        dtype=args.dtype, out=Path(out), timeout=args.timeout)

        def start() -> list[str]:
            with Session(cfg) as session:
                return support.matrix({w.label: w.capabilities for w in [session.reference, *session.engines]})

        lines = _harness(start, args)
    if lines is None:
        return EXIT_USAGE
    print("\n".join(lines))
    return EXIT_OK


def cmd_generic(args: argparse.Namespace, argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="parity-generic-") as out:
        cfg = RunConfig(backends=parse_backends(args.backend or ["vllm", "sglang"], []), reference=_reference(args),
                        device=args.device, dtype=args.dtype, out=Path(out), timeout=args.timeout)

        def derive() -> dict:
            with Session(cfg) as session:
                return generic_tier.derive(session.reference, session.engines, args.timeout)

        table = _harness(derive, args)
    if table is None:
        return EXIT_USAGE
    print("\n".join(generic_tier.render(table)))
    if args.write:
        generic_tier.write(table)
        print(f"parity: generic table stored in {registry.GENERIC_TABLE}", file=sys.stderr)
    return EXIT_OK


def cmd_surface(args: argparse.Namespace, argv: list[str]) -> int:
    archs = _archs(args)
    spec = _reference(args)
    measured = []
    with tempfile.TemporaryDirectory(prefix="parity-surface-") as tmp:
        try:
            python = spec.python or str(envs.ensure(spec.definition, args.device, lambda m: print(m, file=sys.stderr)))
            worker = Worker(spec, python, args.device, Path(tmp) / "logs", envs.cache_dir())
            worker.start()
        except (WorkerError, envs.EnvBuildError) as exc:
            print(f"parity: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        version = worker.capabilities.versions["transformers"]
        try:
            for arch in archs:
                print(f"parity: measuring {arch} ...", file=sys.stderr, flush=True)
                measured.append(surface.measure(worker, arch, args.seed, args.timeout))
                print(surface.render(measured[-1:], verbose=args.all_keys), flush=True)
        finally:
            worker.stop()
    if args.json:
        args.json.write_text(json.dumps([s.to_json() for s in measured], indent=1))
    if args.write:
        print(f"parity: measured effects stored in {surface.write_measured(measured, version)}", file=sys.stderr)
    return EXIT_DIVERGED if any(s.of("unclassified") for s in measured) else EXIT_OK


def cmd_schema(args: argparse.Namespace, argv: list[str]) -> int:
    print(json.dumps(Report.model_json_schema(), indent=1))
    return EXIT_OK


def cmd_env(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        print(envs.ensure(BACKENDS[args.backend], args.device, lambda m: print(m, file=sys.stderr)))
    except envs.EnvBuildError as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


COMMANDS = {"run": cmd_run, "replay": cmd_replay, "gate": cmd_gate, "repro": cmd_repro, "pr": cmd_pr, "merge": cmd_merge, "archs": cmd_archs, "generic": cmd_generic, "surface": cmd_surface,
            "schema": cmd_schema, "env": cmd_env}
