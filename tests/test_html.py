"""The HTML report: self-contained, escaped, compact, and rendered with its plots by a real browser."""

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from parity import html, schema
from parity import report as report_mod
from synthetic_reports import error, example, report, result

SCREENSHOTS = Path(__file__).resolve().parent.parent / ".parity" / "screenshots"
# No network, no GPU, nothing that phones home: the page must render from the file alone.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE = '</pre><script>alert("x")</script>'


def sample():
    return report(
        example("pass01", result("vllm", layers=3), result("sglang", layers=3), result("vllm~sglang", layers=3)),
        example("bad001", result("vllm", {"layers.1.attn_out": 1e-2}, layers=3, tokens=6), error("sglang", HOSTILE),
                result("vllm~sglang", layers=3), minimal=True, role="shrink"),
        example("shrnk1", result("vllm", {"layers.2.mlp_out": 1e-2}, layers=3), role="shrink",
                description="llama(<b>not bold</b>)"),
    )


def test_html_is_self_contained_and_escaped():
    page = html.render(sample())
    assert not re.search(r"https?://|\bsrc=|<link", page)
    assert page.count("<script>") == 1 and "&lt;script&gt;alert(&quot;x&quot;)" in page
    assert "<b>not bold</b>" not in page and "llama(&lt;b&gt;not bold&lt;/b&gt;)" in page


def test_only_headline_failures_are_open():
    page = html.render(sample())
    opened = set(re.findall(r'<details class="example" id="ex-(\w+)" open>', page))
    assert opened == {"bad001"}  # passing and intermediate shrink steps stay collapsed


def test_twenty_examples_stay_small():
    """20 examples at the registry's largest depth, two engines and their pairwise result: about 0.55 MB."""
    examples = [example(f"ex{i:04d}", result("vllm", {"layers.3.q_rot": 1e-2} if i % 4 == 0 else None, layers=4,
                                             tokens=16), result("sglang", layers=4), result("vllm~sglang", layers=4))
                for i in range(20)]
    size = len(html.render(report(*examples)).encode())
    assert size < 20 * 3 * 12_000, f"{size} bytes for 20 examples"


def test_write_puts_html_next_to_json_and_markdown(tmp_path):
    report_mod.write(sample(), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "report.html"}
    assert str(tmp_path / "report.html") in (tmp_path / "report.md").read_text()


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed; the HTML report is tested in a real browser. "
                    "Install it: apt-get install -y chromium", pytrace=False)
    return path


def browse(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def png_size_and_ink(png: bytes) -> tuple[tuple[int, int], float]:
    """Width and height, and the share of decoded bytes that are neither 0 nor 255:
    a blank white page filters to those two values only."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", data[:8])
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    raw = zlib.decompress(idat)
    return size, 1 - (raw.count(0) + raw.count(255)) / len(raw)


def test_chromium_renders_the_plots(tmp_path):
    rep = sample()
    report_mod.write(rep, tmp_path / "report")
    page = tmp_path / "report" / "report.html"

    dom = browse(page, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    plotted = [r for ex in rep.examples for r in ex.results if r.rows]
    per_token = [r for r in plotted if r.first_divergence and r.first_divergence.per_token]
    assert dom.stdout.count("<svg") == 2 * len(plotted) + len(per_token)  # layer plot + heatmap (+ tokens)
    assert dom.stdout.count("<polyline") == len(schema.LAYER_KINDS) * len(plotted)  # one line per layer tensor kind
    # The sorting script ran: it made every header of the two sortable tables focusable.
    # summary: group, name, 4 statuses and known issues, max rel. L2; index: example, description, role, 3 labels
    assert dom.stdout.count('tabindex="0"') == 8 + 6

    shot = tmp_path / "report.png"
    run = browse(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,2000")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    size, ink = png_size_and_ink(shot.read_bytes())
    assert size == (1400, 2000) and ink > 0.01, f"screenshot {size} looks blank (ink {ink:.4f})"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / "test_html-report.png")
