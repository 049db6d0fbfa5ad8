"""What an engine change touches, read without building anything: each changed Python file's
content before and after, from a git range of the engine's checkout or from a .diff file.

Paths are taken relative to the directory holding the engine's package (``vllm/...``,
``sglang/...``), as they sit in an installed environment; the backend table says where
that package lies in the engine's repository (``BackendDef.repo_package``). A change that
touches compiled sources or build files is refused: ``parity pr`` overlays Python files
onto a pinned build, which cannot stand for a rebuilt one.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from parity.known_issues import release

COMPILED = frozenset({".c", ".cc", ".cpp", ".cxx", ".cu", ".cuh", ".h", ".hh", ".hpp", ".pyx", ".pxd", ".metal", ".cmake",
                      ".S", ".so"})
BUILD_FILES = frozenset({"CMakeLists.txt", "setup.py"})

MAX_MINOR_SKEW = 2
"""How many minor releases a checkout may be from the pinned build: whole files from further away
meet engine internals they were not written against (and fail for that, not for the change)."""


class ChangeRefused(ValueError):
    """The change cannot be gated by overlaying Python files (exit code 2)."""


@dataclass(frozen=True)
class ChangedFile:
    path: str
    """Relative to the directory holding the engine's package, e.g. ``vllm/model_executor/models/qwen3.py``."""
    base: bytes | None
    """Content before the change; None for a file the change adds."""
    head: bytes | None
    """Content after the change; None for a file the change deletes."""


@dataclass(frozen=True)
class Change:
    source: str
    """Where it came from, for the report: the range and checkout, or the diff file."""
    files: tuple[ChangedFile, ...]
    ignored: tuple[str, ...]
    """Changed paths outside the engine's package (tests, docs, CI) or not Python: not overlaid."""


def reversed_change(change: Change) -> Change:
    """The change undone: every file's before and after swapped."""
    return Change(f"{change.source}, reversed", tuple(ChangedFile(f.path, f.head, f.base) for f in change.files),
                  change.ignored)


def classify(paths: list[str], repo_package: str) -> tuple[list[str], list[str]]:
    """Split repository paths into the package's Python files (relative to the package's parent)
    and ignored ones; refuse compiled sources and build files."""
    compiled = [p for p in paths if PurePosixPath(p).suffix in COMPILED or PurePosixPath(p).name in BUILD_FILES]
    if compiled:
        raise ChangeRefused(f"the change touches compiled sources or build files ({', '.join(compiled[:5])}"
                            f"{', ...' if len(compiled) > 5 else ''}): overlaying Python files onto the pinned build "
                            f"cannot test it; build both sides and compare them with parity run --backend NAME=PYTHON")
    parent = str(PurePosixPath(repo_package).parent)
    inside, ignored = [], []
    for p in paths:
        if p.startswith(repo_package + "/") and p.endswith(".py"):
            inside.append(p if parent == "." else p[len(parent) + 1:])
        else:
            ignored.append(p)
    return inside, ignored


def _git(args: list[str], cwd: Path, what: str) -> bytes:
    try:
        cp = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=120)
    except OSError as exc:
        raise ChangeRefused(f"cannot run git: {exc}") from None
    if cp.returncode:
        message = cp.stderr.decode(errors="replace").strip().splitlines()
        raise ChangeRefused(f"{what}: {message[-1] if message else f'git exited with {cp.returncode}'}")
    return cp.stdout


def check_version(checkout_version: str, pinned: str) -> None:
    """Refuse a checkout whose release is more than ``MAX_MINOR_SKEW`` minor releases from the pinned one."""
    mine, theirs = release(checkout_version.lstrip("v")), release(pinned)
    if mine is None or theirs is None:
        raise ChangeRefused(f"cannot compare the checkout's version {checkout_version!r} with the pinned {pinned!r}")
    mine, theirs = (mine + (0, 0))[:2], (theirs + (0, 0))[:2]
    if mine[0] != theirs[0] or abs(mine[1] - theirs[1]) > MAX_MINOR_SKEW:
        raise ChangeRefused(f"the checkout is at {checkout_version}, too far from the pinned build {pinned} "
                            f"(at most {MAX_MINOR_SKEW} minor releases apart): its files would meet internals "
                            f"they were not written against; rebase the change or build it")


def from_range(checkout: Path, rev_range: str, repo_package: str, pinned: str, paths: list[str] = ()) -> Change:
    """The change ``BASE..HEAD`` of a git checkout of the engine (optionally limited to ``paths``)."""
    base, sep, head = rev_range.partition("..")
    if not sep or not base or not head or head.startswith("."):
        raise ChangeRefused(f"--range {rev_range!r}: expected BASE..HEAD, e.g. origin/main..my-branch")
    if not (checkout / ".git").exists():
        raise ChangeRefused(f"{checkout} is not a git checkout")
    tag = _git(["describe", "--tags", "--abbrev=0", head], checkout, f"{checkout}: no release tag reachable from "
               f"{head} to tell its version (git fetch --tags)").decode().strip()
    check_version(tag, pinned)
    listing = _git(["diff", "--name-status", "--no-renames", "-z", base, head, "--", *paths], checkout,
                   f"git diff {rev_range}").decode().split("\0")
    changed = dict(zip(listing[1::2], listing[0::2]))  # path -> status letter
    inside, ignored = classify(list(changed), repo_package)
    prefix = str(PurePosixPath(repo_package).parent)

    def show(rev: str, rel: str) -> bytes:
        path = rel if prefix == "." else f"{prefix}/{rel}"
        return _git(["show", f"{rev}:{path}"], checkout, f"git show {rev}:{path}")

    files = tuple(ChangedFile(rel, None if changed[_repo(rel, prefix)] == "A" else show(base, rel),
                              None if changed[_repo(rel, prefix)] == "D" else show(head, rel)) for rel in inside)
    return Change(f"{rev_range} of {checkout} ({tag})", files, tuple(ignored))


def _repo(rel: str, prefix: str) -> str:
    return rel if prefix == "." else f"{prefix}/{rel}"


def _diff_paths(text: str) -> list[str]:
    paths = []
    for line in text.splitlines():
        if line.startswith(("--- ", "+++ ")):
            name = line[4:].split("\t")[0].strip()
            if name != "/dev/null":
                paths.append(name[2:] if name.startswith(("a/", "b/")) else name)
    return list(dict.fromkeys(paths))


def from_diff(diff: Path, repo_package: str, installed: Path, pinned: str) -> Change:
    """The change a unified diff (``git diff``, ``diff -u``) makes, against the pinned install in ``installed``
    (the directory holding its package). A diff that applies to the pinned files is the change from them; one
    that applies to them only in reverse was already released in the pinned build, and is the change to them."""
    try:
        text = diff.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ChangeRefused(f"cannot read {diff}: {exc}") from None
    paths = _diff_paths(text)
    if not paths:
        raise ChangeRefused(f"{diff} holds no file changes (expected a unified diff)")
    inside, ignored = classify(paths, repo_package)
    prefix = str(PurePosixPath(repo_package).parent)
    with tempfile.TemporaryDirectory(prefix="parity-change-") as tmp:
        pinned_tree, other_tree = Path(tmp) / "pinned", Path(tmp) / "other"
        for rel in inside:
            src = installed / rel
            if src.is_file():
                dst = pinned_tree / _repo(rel, prefix)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        pinned_tree.mkdir(exist_ok=True)
        shutil.copytree(pinned_tree, other_tree)
        apply = ["apply", *(f"--include={_repo(rel, prefix)}" for rel in inside), str(diff.resolve())]
        forward = subprocess.run(["git", *apply[:1], "--check", *apply[1:]], cwd=other_tree, capture_output=True,
                                 text=True)
        released = forward.returncode != 0  # the pinned build may already hold the change
        if released and subprocess.run(["git", *apply[:1], "-R", "--check", *apply[1:]], cwd=other_tree,
                                       capture_output=True).returncode:
            why = (forward.stderr.strip().splitlines() or ["?"])[0]
            raise ChangeRefused(f"{diff} applies to neither side of the pinned {pinned}'s files ({why}): "
                                f"it was made against another version")
        _git([*apply[:1], *(["-R"] if released else []), *apply[1:]], other_tree, f"git apply {diff}")
        base_tree, head_tree = (other_tree, pinned_tree) if released else (pinned_tree, other_tree)

        def read(tree: Path, rel: str) -> bytes | None:
            p = tree / _repo(rel, prefix)
            return p.read_bytes() if p.is_file() else None

        files = tuple(f for f in (ChangedFile(rel, read(base_tree, rel), read(head_tree, rel)) for rel in inside)
                      if f.base != f.head)
    direction = "already in the pinned build: gated as base -> pinned" if released else "onto the pinned build"
    return Change(f"{diff} ({direction})", files, tuple(ignored))
