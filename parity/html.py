"""HTML rendering of a report: one self-contained file people can open anywhere.

No network: CSS, the sorting script and every plot (SVG, drawn here) are inline,
so the file works as a CI artifact, offline, or attached to an issue. Examples
are collapsed; failing ones open (not the steps of shrinking). Plots show a
result's worst error over prompts and compared steps per (tensor kind, layer),
against the noise-floor band.
"""

from __future__ import annotations

import json
import math
from html import escape

from parity import schema
from parity.records import BackendInfo, BackendResult, Divergence, ExampleRecord, Report, TensorRow
from parity.tables import (COLUMNS, KNOWN, TRAJECTORIES, known_issues_seen, shown_counts, shown_status, step_name,
                           surface_line, trajectory_line, verdict)

KIND_COLORS = {"q_rot": "#1f77b4", "k_rot": "#ff7f0e", "attn_out": "#2ca02c", "router_logits": "#bcbd22",
               "expert_weights": "#17becf", "mlp_out": "#9467bd", "residual": "#8c564b"}


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2e}"


def render(report: Report) -> str:
    s = report.summary
    title = f"parity report — {s.examples} example{'' if s.examples == 1 else 's'}, {report.dtype} on {report.device}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>profile <code>{_e(report.profile)}</code>"
        + ("" if report.seed is None else f", seed {report.seed}") + f", created {_e(report.created)}, "
        f"parity {_e(report.parity_version)}"
        + ("" if report.complete else ' — <strong class="st-error">incomplete run</strong>') + "</p>",
        f"<p>Command: <code>{_e(report.command)}</code></p>",
        f'<p class="verdict">{_e(verdict(report))}</p>',
        "<h2>Summary</h2>", _summary_table(report), _decode(report), _known_issues(report), _surface(report),
        "<h2>Examples</h2>", _index_table(report),
        "<h2>Versions</h2>", _versions_table([report.reference, *report.backends]),
        *(_example(ex) for ex in report.examples),
        f"<script>{_JS}</script></body></html>",
    ]
    return "\n".join(parts)


# -- tables -------------------------------------------------------------------

def _badge(shown: str, title: str = "") -> str:
    tip = f' title="{_e(title)}"' if title else ""
    return f'<span class="st st-{_e(shown.replace(" ", "-"))}"{tip}>{_e(shown)}</span>'


def _status(r: BackendResult) -> str:
    """The result's badge; a known engine issue gets its own, its tooltip the status report.json keeps."""
    return _badge(shown_status(r), f"{r.status}: {r.known_issue}" if r.known_issue else "")


def _summary_table(report: Report) -> str:
    s = report.summary
    head = "".join(f"<th>{h}</th>" for h in ("group", "name", *COLUMNS, "max rel. L2 (passing)"))
    rows = []
    for group, table, known in (("backend", s.by_backend, s.known_by_backend),
                                ("architecture", s.by_arch, s.known_by_arch)):
        for name, counts in table.items():
            shown = shown_counts(counts, known.get(name, {}))
            cells = "".join(f'<td class="n">{shown[col]}</td>' for col in COLUMNS)
            mx = s.max_rel_l2.get(name) if group == "backend" else None
            rows.append(f"<tr><td>{group}</td><td>{_e(name)}</td>{cells}<td class=\"n\">{_num(mx)}</td></tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _decode(report: Report) -> str:
    line = trajectory_line(report)
    return f"<p>{_e(line)}.</p>" if line else ""


def _known_issues(report: Report) -> str:
    known = known_issues_seen(report)
    if not known:
        return ""
    items = "".join(f"<li><details><summary>{_e(k.where)}</summary><p>{_e(k.diagnosis)}</p></details></li>"
                    for k in known)
    return (f"<p>Known engine issues ({_badge(KNOWN)}: still diverged or error in report.json, "
            f"not failing the run; <code>parity/known_issues.py</code>):</p><ul>{items}</ul>")


def _surface(report: Report) -> str:
    if not report.surface:
        return ""
    items = "".join(f"<li><b>{_e(arch)}</b> {_e(surface_line(arch, report))}</li>" for arch in report.surface)
    return (f"<p>Config surface (<code>parity surface</code>, transformers "
            f"{_e(next(iter(report.surface.values())).transformers)}): of the config keys that change the "
            f"reference's output, those the strategies vary:</p><ul>{items}</ul>")


def _index_table(report: Report) -> str:
    labels = list(dict.fromkeys(r.backend for ex in report.examples for r in ex.results))
    head = "".join(f"<th>{_e(h)}</th>" for h in ("example", "description", "role", *labels))
    rows = []
    for ex in report.examples:
        by_label = {r.backend: r for r in ex.results}
        cells = "".join(f"<td>{_status(by_label[b]) if b in by_label else ''}</td>" for b in labels)
        role = ex.role + (" (minimal)" if ex.minimal else "")
        rows.append(f'<tr><td><a href="#ex-{_e(ex.id)}"><code>{_e(ex.id)}</code></a></td>'
                    f"<td>{_e(ex.description)}</td><td>{_e(role)}</td>{cells}</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _versions_table(infos: list[BackendInfo]) -> str:
    rows = "".join(
        f"<tr><td>{_e(b.label)}</td><td>{_e(b.engine)}</td>"
        f"<td>{_e(', '.join(f'{k} {v}' for k, v in b.versions.items()))}</td>"
        f"<td><code>{_e(b.python)}</code></td><td>{_e(', '.join(b.patches))}</td></tr>" for b in infos)
    return ("<table><thead><tr><th>label</th><th>engine</th><th>versions</th><th>python</th><th>patches</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


# -- one example ----------------------------------------------------------------

def _example(ex: ExampleRecord) -> str:
    badges = " ".join(f"{_e(r.backend)} {_status(r)}" for r in ex.results)
    minimal = ' <strong>(minimal)</strong>' if ex.minimal else ""
    prompts = "; ".join(" ".join(str(t) for t in p) for p in ex.prompts)
    body = [
        f"<p>id <code>{_e(ex.id)}</code>, arch {_e(ex.arch)}, role {_e(ex.role)}, weight seed {ex.weight_seed}, "
        f"{ex.decode_steps} decode steps; prompts (token ids): {_e(prompts)}</p>",
        f"<p>Replay: <code>{_e(ex.replay)}</code></p>",
        f"<details><summary>config</summary><pre>{_e(json.dumps(ex.config, indent=1, sort_keys=True))}</pre></details>",
        *(_result(ex, r) for r in ex.results),
    ]
    return (f'<details class="example" id="ex-{_e(ex.id)}"{" open" if ex.headline_failure else ""}>'
            f"<summary>{_e(ex.description)}{minimal} — {badges}</summary>{''.join(body)}</details>")


def _result(ex: ExampleRecord, r: BackendResult) -> str:
    out = [f'<section class="result"><h3>{_e(r.backend)} {_status(r)}</h3>']
    if r.known_issue:
        tested = (", confirmed: the engine agrees with the reference on the checkpoint as the issue says it reads it"
                  if r.diagnosis == "confirmed" else "")
        out.append(f'<details class="known"><summary>known engine issue: {_e(r.status)}, not failing the run{tested}'
                   f"</summary><p>{_e(r.known_issue)}</p></details>")
    if r.reason:
        out.append(f"<pre>{_e(r.reason)}</pre>")
    if r.trajectory and ex.decode_steps:
        out.append(f"<p>Decode steps compared along {_e(TRAJECTORIES[r.trajectory])}.</p>")
    out += [f'<p class="note">{_e(n)}</p>' for n in r.notes]
    d = r.first_divergence
    if d:
        out.append(f"<p>First divergence: <code>{_e(d.tensor)}</code> ({_e(_where(d.step, d.prompt))}, "
                   f"worst token {d.worst_token}), rel. L2 {_num(d.rel_l2)} against a band of {_num(d.band)}; "
                   f"{_e(d.reason)}. At index {_e(d.worst_index)}: {d.candidate_value:.6g} "
                   f"vs reference {d.reference_value:.6g}.</p>")
    elif r.max_rel_l2 is not None:
        out.append(f"<p>Largest rel. L2 over compared tensors: {_num(r.max_rel_l2)}.</p>")
    grid = _worst_by_layer(r.rows)
    if grid:
        out.append('<div class="plots">' + _layer_plot(grid) + _heatmap(grid) + "</div>")
        worst: dict[str, float] = {}
        for row in r.rows:
            if row.layer is None and row.verdict != "skipped":
                worst[row.kind] = max(worst.get(row.kind, 0.0), row.rel_l2)
        if worst:
            out.append("<p>Outside the layers (worst rel. L2): "
                       + ", ".join(f"{_e(k)} {_num(v)}" for k, v in worst.items()) + "</p>")
    if d and d.per_token:
        tokens = ex.prompts[d.prompt] if d.step == 0 else []
        out.append(_token_plot(d, tokens))
    out.append("</section>")
    return "".join(out)


def _where(step: int, prompt: int) -> str:
    return f"{step_name(step)}, prompt {prompt}"


# -- plots ----------------------------------------------------------------------

class _Cell:
    """Worst error of one (kind, layer) over prompts and compared steps, with its band."""

    def __init__(self, row: TensorRow):
        self.rel_l2, self.floor, self.band, self.out = row.rel_l2, row.floor, row.band, row.verdict != "ok"

    def add(self, row: TensorRow) -> None:
        self.rel_l2 = max(self.rel_l2, row.rel_l2)
        self.floor, self.band = min(self.floor, row.floor), max(self.band, row.band)
        self.out = self.out or row.verdict != "ok"


def _worst_by_layer(rows: list[TensorRow]) -> dict[tuple[str, int], _Cell]:
    grid: dict[tuple[str, int], _Cell] = {}
    for row in rows:
        if row.layer is None or row.verdict == "skipped":
            continue
        k = (row.kind, row.layer)
        if k in grid:
            grid[k].add(row)
        else:
            grid[k] = _Cell(row)
    return grid


class _LogAxis:
    """A log10 y axis over [lo, hi] mapped to pixels [bottom, top]; zero and infinity clip to its ends."""

    def __init__(self, values: list[float], top: float, bottom: float):
        finite = [v for v in values if 0 < v < math.inf]
        lo, hi = (min(finite), max(finite)) if finite else (1e-8, 1.0)
        self.lo = math.floor(math.log10(lo))
        self.hi = max(math.ceil(math.log10(hi)), self.lo + 2)
        self.lo = max(self.lo, self.hi - 14)  # past 14 decades the interesting part is a sliver
        self.top, self.bottom = top, bottom

    def y(self, v: float) -> float:
        t = (math.log10(v) if v > 0 else -math.inf) if v < math.inf else math.inf
        t = min(max(t, self.lo), self.hi)
        return round(self.bottom - (t - self.lo) / (self.hi - self.lo) * (self.bottom - self.top))

    def grid(self, left: float, right: float) -> str:
        step = 1 if self.hi - self.lo <= 8 else 2
        out = []
        for e in range(self.lo, self.hi + 1, step):
            y = self.y(10.0**e)
            out.append(f'<line class="grid" x1="{left}" x2="{right}" y1="{y}" y2="{y}"/>'
                       f'<text class="tick" x="{left - 4}" y="{y + 3}" text-anchor="end">1e{e}</text>')
        return "".join(out)


def _layer_plot(grid: dict[tuple[str, int], _Cell]) -> str:
    layers = sorted({layer for _, layer in grid})
    kinds = [k for k in schema.LAYER_KINDS if any((k, layer) in grid for layer in layers)]
    w, h, left, right, top, bottom = 560, 260, 52, 440, 12, 226
    axis = _LogAxis([v for c in grid.values() for v in (c.rel_l2, c.floor, c.band)], top, bottom)
    dx = (right - left) / len(layers)
    x = {layer: round(left + dx * (i + 0.5)) for i, layer in enumerate(layers)}
    # The band as steps: per layer, from the smallest floor to the largest band of its kinds.
    upper: list[list[int]] = []
    lower: list[list[int]] = []
    for layer in layers:
        cells = [grid[(k, layer)] for k in kinds if (k, layer) in grid]
        x0, x1 = round(x[layer] - dx / 2), round(x[layer] + dx / 2)
        for line, y in ((upper, axis.y(max(c.band for c in cells))), (lower, axis.y(min(c.floor for c in cells)))):
            if line and line[-1][1] == y:
                line[-1][0] = x1
            else:
                line += [[x0, y], [x1, y]]
    band = " ".join(f"{px},{py}" for px, py in upper + lower[::-1])
    svg = [f'<svg class="plot layer-plot" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">',
           "<title>relative L2 error per layer (log scale), worst over prompts and steps</title>",
           axis.grid(left, right),
           f'<polygon class="band" points="{band}"><title>noise floor to band</title></polygon>']
    for kind in kinds:
        pts = [(layer, grid[(kind, layer)]) for layer in layers if (kind, layer) in grid]
        color = KIND_COLORS[kind]
        svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                   f'points="{" ".join(f"{x[layer]},{axis.y(c.rel_l2)}" for layer, c in pts)}"/>'
                   f'<g stroke="{color}" fill="#fff">')
        for layer, c in pts:
            fill = f' fill="{color}"' if c.out else ""
            svg.append(f'<circle cx="{x[layer]}" cy="{axis.y(c.rel_l2)}" r="3.5"{fill}><title>layers.{layer}.{kind}: '
                       f"{c.rel_l2:.1e} (band {c.band:.1e}, floor {c.floor:.1e})</title></circle>")
        svg.append("</g>")
    for layer in layers:
        svg.append(f'<text class="tick" x="{x[layer]}" y="{bottom + 14}" text-anchor="middle">{layer}</text>')
    svg.append(f'<text class="tick" x="{(left + right) / 2}" y="{h - 4}" text-anchor="middle">layer</text>'
               f'<text class="tick" transform="translate(11 {(top + bottom) / 2}) rotate(-90)" text-anchor="middle">'
               "rel. L2, worst over prompts and steps</text>")
    for i, kind in enumerate(kinds):
        y = top + 10 + i * 16
        svg.append(f'<line x1="{right + 12}" x2="{right + 30}" y1="{y}" y2="{y}" stroke="{KIND_COLORS[kind]}" '
                   f'stroke-width="2"/><text class="tick" x="{right + 36}" y="{y + 4}">{kind}</text>')
    y = top + 10 + len(kinds) * 16
    svg.append(f'<rect class="band" x="{right + 12}" y="{y - 5}" width="18" height="10"/>'
               f'<text class="tick" x="{right + 36}" y="{y + 4}">floor–band</text>'
               f'<text class="tick" x="{right + 12}" y="{y + 22}">filled: outside</text></svg>')
    return "".join(svg)


def _heat_color(ratio: float) -> str:
    """Colour by error / band on a log scale: greens inside the band, reds outside."""
    t = math.log10(ratio) if 0 < ratio < math.inf else (-3.0 if ratio == 0 else 4.0)
    if t <= 0:
        return f"hsl({round(120 - 60 * (max(t, -3) + 3) / 3)}, 55%, 85%)"
    return f"hsl({round(30 - 30 * min(t, 4) / 4)}, 80%, {round(62 - 20 * min(t, 4) / 4)}%)"


def _heatmap(grid: dict[tuple[str, int], _Cell]) -> str:
    layers = sorted({layer for _, layer in grid})
    kinds = [k for k in schema.LAYER_KINDS if any((k, layer) in grid for layer in layers)]
    cw = max(14, min(48, 400 // len(layers)))
    left, top, ch = 64, 8, 22
    w, h = max(left + cw * len(layers) + 8, 300), top + ch * len(kinds) + 30
    svg = [f'<svg class="plot heatmap" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">'
           "<title>error / band by tensor kind and layer</title>"]
    for i, kind in enumerate(kinds):
        y = top + i * ch
        svg.append(f'<text class="tick" x="{left - 4}" y="{y + ch / 2 + 4}" text-anchor="end">{kind}</text>')
        for j, layer in enumerate(layers):
            c = grid.get((kind, layer))
            if c is None:
                continue
            ratio = c.rel_l2 / c.band if c.band > 0 else math.inf
            svg.append(f'<rect x="{left + j * cw}" y="{y}" width="{cw - 1}" height="{ch - 1}" '
                       f'fill="{_heat_color(ratio)}"><title>layers.{layer}.{kind}: {c.rel_l2:.1e} = {ratio:.2g} x band'
                       "</title></rect>")
    step = max(1, len(layers) // 16)
    for j in range(0, len(layers), step):
        svg.append(f'<text class="tick" x="{left + j * cw + cw / 2}" y="{top + ch * len(kinds) + 13}" '
                   f'text-anchor="middle">{layers[j]}</text>')
    svg.append(f'<text class="tick" x="{left}" y="{h - 3}">layer; colour: error / band (green inside)</text></svg>')
    return "".join(svg)


def _token_plot(d: Divergence, tokens: list[int]) -> str:
    n = len(d.per_token)
    w, h, left, top, bottom = max(440, min(900, 60 + 28 * n)), 212, 52, 22, 164
    right = w - 10
    axis = _LogAxis([*d.per_token, d.band], top, bottom)
    bw = (right - left) / n
    band_y = axis.y(d.band)
    svg = [f'<svg class="plot token-plot" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">',
           f"<title>per-token rel. L2 of {_e(d.tensor)}</title>",
           f'<text class="caption" x="{left}" y="12">{_e(d.tensor)} ({_e(_where(d.step, d.prompt))}): '
           "rel. L2 per token</text>", axis.grid(left, right)]
    for i, v in enumerate(d.per_token):
        y = axis.y(v)
        cls = "worst" if i == d.worst_token else ("out" if not v <= d.band else "in")
        label = f"token {i}" + (f" (id {tokens[i]})" if i < len(tokens) else "")
        svg.append(f'<rect class="bar {cls}" x="{round(left + i * bw + 1)}" y="{y}" '
                   f'width="{max(round(bw - 2), 1)}" height="{bottom - y}">'
                   f"<title>{_e(label)}: rel. L2 {_num(v)}</title></rect>")
    svg.append(f'<line class="bandline" x1="{left}" x2="{right}" y1="{band_y}" y2="{band_y}"><title>band '
               f"{_num(d.band)}</title></line>")
    every = max(1, n // 24)
    for i in range(0, n, every):
        x = round(left + (i + 0.5) * bw)
        svg.append(f'<text class="tick" x="{x}" y="{bottom + 13}" text-anchor="middle">{i}</text>')
        if every == 1 and i < len(tokens):
            svg.append(f'<text class="tick id" x="{x}" y="{bottom + 25}" text-anchor="middle">id {tokens[i]}</text>')
    svg.append(f'<text class="tick" x="{left}" y="{h - 4}">token (dashed: band; red: worst element\'s token)</text>'
               "</svg>")
    return "".join(svg)


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1300px;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.4em 0}th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#f2f2f2}table.sortable th{cursor:pointer}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:12px/1.4 ui-monospace,monospace}pre{background:#f7f7f7;padding:6px;overflow-x:auto;max-height:22em}
details.example{border:1px solid #ddd;border-radius:4px;margin:.5em 0;padding:.3em .7em}
details.example>summary{cursor:pointer;font-weight:600}.result{border-top:1px solid #eee;margin-top:.6em}
.st{border-radius:3px;padding:0 5px;font-size:12px;font-weight:600}.st-pass{background:#d9f2d9;color:#1a5e1a}
.st-diverged{background:#f8d0d0;color:#8b0000}.st-error{background:#f3d6ec;color:#6b0057}
.st-unsupported{background:#e6e6e6;color:#555}.st-known-issue{background:#fbecc0;color:#6b4e00}.note{color:#7a5b00}
details.known>summary{cursor:pointer}.verdict{font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}svg.plot{background:#fff}
svg .grid{stroke:#e4e4e4}svg .tick{font-size:10px;fill:#444}svg .id{fill:#888}svg .caption{font-size:11px;fill:#222}
svg .band{fill:#bbb;fill-opacity:.35}svg .bandline{stroke:#555;stroke-dasharray:4 3}
svg .bar.in{fill:#8fc98f}svg .bar.out{fill:#f0a35e}svg .bar.worst{fill:#c62828}
"""

# Sorting (click or Enter on a header); opening the example an #anchor points at.
_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("th");
  heads.forEach(function (th, col) {
    th.tabIndex = 0;
    th.title = "sort";
    var sort = function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var key = function (row) {
        var text = row.cells[col].textContent.trim(), n = text === "" ? NaN : Number(text);
        return isNaN(n) ? text : n;
      };
      var body = table.tBodies[0];
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b);
        var o = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
        return asc ? o : -o;
      }).forEach(function (row) { body.appendChild(row); });
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
  });
});
function openTarget() {
  var t = document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if (t && t.tagName === "DETAILS") { t.open = true; }
}
window.addEventListener("hashchange", openTarget);
openTarget();
"""
