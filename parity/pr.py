"""``parity pr``: gate an engine change that touches only Python files, without building the engine.

The change (a git range of the engine's checkout, or a .diff file) is read into each changed
file's content before and after (:mod:`parity.change`), and each side is written as an
overlay directory: the pinned build's environment, untouched, runs with that side's files
taking precedence (:mod:`parity.worker.overlay`). The engine says where each family lives,
which picks the families the change can affect (:mod:`parity.affected`). The baseline
(pinned build + the files before) is searched; the candidate (+ the files after) runs the
baseline's very examples (generated ones, and the minimal example of a failure); :mod:`parity.gate` judges the pair.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from parity import gate, registry
from parity import report as report_mod
from parity.affected import affected
from parity.change import Change, ChangeRefused
from parity.example import Example
from parity.profiles import Profile
from parity.records import Report
from parity.search import run
from parity.session import RunConfig, Session, replay
from parity.summary import summarize
from parity.worker import overlay
from parity.worker.contract import ModulesReply, ModulesRequest

_INSTALLED = ("import importlib.metadata as m, importlib.util, json, sys, pathlib; "
              "spec = importlib.util.find_spec(sys.argv[1]); "
              "print(json.dumps(spec and [str(pathlib.Path(spec.origin).parent.parent), "
              "m.version(m.packages_distributions()[sys.argv[1]][0])]))")


def installed(python: str, package: str) -> tuple[Path, str]:
    """The directory holding ``package`` in an environment, and its distribution's version (the
    engine is not imported)."""
    cp = subprocess.run([python, "-c", _INSTALLED, package], capture_output=True, text=True, timeout=120)
    found = json.loads(cp.stdout) if cp.returncode == 0 and cp.stdout.strip() else None
    if not found:
        raise ChangeRefused(f"{python} has no {package} installed")
    return Path(found[0]), found[1]


def write_overlay(directory: Path, change: Change, side: str) -> Path:
    """One side (``base`` or ``head``) of the change as an overlay directory (parity/worker/overlay.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    deleted = []
    for f in change.files:
        content = f.base if side == "base" else f.head
        if content is None:
            deleted.append(overlay.module_name(Path(f.path)))
            continue
        target = directory / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    (directory / overlay.DELETED).write_text("\n".join(deleted))
    (directory / overlay.SITECUSTOMIZE).write_text(
        "# Written by parity pr: this change's files first (parity/worker/overlay.py).\n"
        "from parity.worker.overlay import install\n\ninstall(__file__)\n")
    return directory


@dataclass(frozen=True)
class PrOutcome:
    families: dict[str, str]
    """Family -> why the change can affect it."""
    result: gate.GateResult | None
    """None when no family is affected (nothing to run)."""
    markdown: str


def gate_change(cfg: RunConfig, change: Change, archs: list[str] | None, profile: Profile,
                log: Callable[[str], None]) -> PrOutcome:
    """Run the baseline search and the candidate on its examples; judge them; write report.md into ``cfg.out``."""
    (spec,) = cfg.backends
    families: dict[str, str] = {}

    def pick(session: Session) -> list[str]:
        wanted = {f: s.architecture for f, s in registry.ARCHITECTURES.items() if not archs or f in archs}
        reply: ModulesReply = session.engines[0].call(ModulesRequest(sorted(set(wanted.values()))), cfg.timeout)
        changed = [overlay.module_name(Path(f.path)) for f in change.files]
        families.update(affected(changed, reply.modules, wanted))
        log("parity: families the change can affect: "
            + (", ".join(f"{f} ({why})" for f, why in families.items()) or "none"))
        return list(families)

    out = cfg.out
    base_spec = replace(spec, overlay=str(write_overlay(out / "overlay" / "base", change, "base")))
    head_spec = replace(spec, overlay=str(write_overlay(out / "overlay" / "head", change, "head")))
    baseline = run(replace(cfg, backends=[base_spec], out=out / "baseline"), pick, profile)
    if not families:
        text = _markdown(change, families, None, baseline, None)
        report_mod.atomic_write(out / "report.md", text)
        return PrOutcome(families, None, text)
    # The steps of shrinking a baseline failure repeat what its minimal example shows: neither run nor judged.
    kept = [ex for ex in baseline.examples if ex.role != "shrink" or ex.minimal]
    examples = [Example.from_json(ex.model_dump()) for ex in kept]
    log(f"parity: candidate: the baseline's {len(examples)} examples (generated, and minimal failing ones) "
        f"with the change applied")
    candidate = replay(replace(cfg, backends=[head_spec], out=out / "candidate"), examples)
    result = gate.gate(baseline.model_copy(update={"examples": kept, "summary": summarize(kept)}), candidate)
    text = _markdown(change, families, result, baseline, candidate)
    report_mod.atomic_write(out / "report.md", text)
    return PrOutcome(families, result, text)


def _markdown(change: Change, families: dict[str, str], result: gate.GateResult | None, baseline: Report,
              candidate: Report | None) -> str:
    engine = baseline.backends[0]
    lines = [gate.render(result, "baseline/report.json", "candidate/report.json").rstrip() if result else
             "## parity pr: no family parity tests is affected by this change", "",
             f"Change: {change.source}, overlaid on {engine.engine} {engine.versions.get(engine.engine, '')} "
             f"(`{engine.python}`); profile `{baseline.profile}`, {baseline.dtype} on {baseline.device}.", "",
             f"Files ({len(change.files)}): " + ", ".join(f"`{f.path}`" for f in change.files)]
    if change.ignored:
        lines.append(f"Not overlaid ({len(change.ignored)}, outside the package or not Python): "
                     + ", ".join(f"`{p}`" for p in change.ignored[:20]) + (" ..." if len(change.ignored) > 20 else ""))
    lines += ["", "Families: " + ("; ".join(f"{f} ({why})" for f, why in families.items()) or "none")]
    if candidate is not None:
        lines += ["", f"Baseline: {baseline.summary.examples} examples searched "
                      f"({_counts(baseline)}); candidate on the same examples ({_counts(candidate)})."]
    return "\n".join(lines) + "\n"


def _counts(report: Report) -> str:
    counts = next(iter(report.summary.by_backend.values()), {})
    return ", ".join(f"{n} {status}" for status, n in counts.items())

