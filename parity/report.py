"""Reading and writing a report directory: report.json (the contract), report.md (for a
PR comment) and report.html (for people).

Writes are atomic: an interrupted run leaves the last complete files. A run writes
the JSON as examples finish, no more often than keeps that under a tenth of its time
(``Session._save_now_and_then``), and renders Markdown and HTML only when asked (at
the end and on interrupt): re-rendering every example after each one grows
quadratically over a long run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from parity import html, markdown
from parity.records import SCHEMA_VERSION, Report


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write(report: Report, directory: Path, *, render: bool = True) -> None:
    """Write report.json, and with ``render`` report.md and report.html next to it."""
    atomic_write(directory / "report.json", report.model_dump_json(indent=1))
    if render:
        atomic_write(directory / "report.md", markdown.render(report, directory / "report.html"))
        atomic_write(directory / "report.html", html.render(report))


def read(path: Path) -> Report:
    """Read a report.json, or the report.json in a report directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read report {path}: {exc}") from exc
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {data.get('schema_version')!r}; this parity reads {SCHEMA_VERSION}")
    return Report.model_validate(data)
