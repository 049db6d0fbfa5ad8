"""Worker processes seen from the orchestrator.

Each backend runs as ``python -m parity.worker`` in its own interpreter, one
engine import for many models. Requests and replies are JSON lines over pipes
(never a listening socket). A worker that dies or overruns its timeout becomes
a :class:`WorkerError` carrying the tail of its stderr log; the caller decides
whether to restart it. Requests and replies are the typed records of
:mod:`parity.worker.contract`.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import signal
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from parity.backends import BackendSpec
from parity.worker import contract, patches, protocol
from parity.worker.contract import Capabilities

PACKAGE_ROOT = Path(__file__).resolve().parent


class WorkerError(RuntimeError):
    def __init__(self, label: str, reason: str, log_tail: str = "", usable: bool = False, kind: str = ""):
        self.label, self.reason, self.log_tail = label, reason, log_tail
        self.usable = usable
        """The worker answered and serves the next request (an error reply after which the engine was torn
        down); False after a death, a timeout or a failed teardown: the worker must be restarted."""
        self.kind = kind
        """The exception type the worker raised, if it answered."""
        super().__init__(f"{label}: {reason}" + (f"\n--- worker log (tail) ---\n{log_tail}" if log_tail else ""))


class WorkerHandle(Protocol):
    """What a session needs of a worker; tests put a fake in its place."""

    spec: BackendSpec
    python: str
    capabilities: Capabilities

    @property
    def label(self) -> str: ...

    def start(self) -> Capabilities: ...

    def submit(self, request: Any) -> None: ...

    def receive(self, timeout: float) -> Any: ...

    def call(self, request: Any, timeout: float) -> Any: ...

    def restart(self) -> Capabilities: ...

    def stop(self) -> None: ...


CRASH_BANNERS = ("Segfault encountered", "Fatal Python error")
"""Lines a native crash handler (torch's, Python's faulthandler) prints before the crashing thread's stack."""


def crash_site(log: str, frames: int = 6) -> list[str]:
    """The innermost frames of the last crash ``log`` shows: a native stack runs to a hundred frames and more
    (the interpreter's own last), so the log's tail, which a result's reason carries, shows none of the engine's."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if any(b in line for b in CRASH_BANNERS)]
    return [line.rstrip() for line in lines[starts[-1] + 1:starts[-1] + 1 + frames]] if starts else []


def _tail(log: str, lines: int = 25) -> str:
    return "\n".join(log.splitlines()[-lines:])


def worker_path(cache: Path) -> Path:
    """A directory holding only a link to this parity package and the ``sitecustomize`` that applies a
    worker's patches in the processes its engine spawns (``parity.worker.patches``), for the worker's
    PYTHONPATH.

    The orchestrator's own site-packages must not leak into engine environments.
    """
    root = cache / "workerpath" / hashlib.sha256(str(PACKAGE_ROOT).encode()).hexdigest()[:12]
    link = root / "parity"
    if not link.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"parity.{os.getpid()}"
        tmp.symlink_to(PACKAGE_ROOT, target_is_directory=True)
        os.replace(tmp, link)
    site = root / "sitecustomize.py"
    if not site.exists() or site.read_text() != patches.SITECUSTOMIZE:
        tmp = root / f"sitecustomize.{os.getpid()}"
        tmp.write_text(patches.SITECUSTOMIZE)
        os.replace(tmp, site)
    return root


class Worker:
    def __init__(self, spec: BackendSpec, python: str, device: str, log_dir: Path, cache: Path,
                 start_timeout: float = 600.0):
        self.spec = spec
        self.python = python
        self.device = device
        self.log_path = log_dir / f"worker-{spec.label}.log"
        self.cache = cache
        self.start_timeout = start_timeout
        self.capabilities: Capabilities
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._expected: deque[type] = deque()  # reply types of the requests in flight, in order

    @property
    def label(self) -> str:
        return self.spec.label

    def start(self) -> Capabilities:
        cmd = [self.python, "-m", "parity.worker", "--adapter", self.spec.definition.adapter, "--device", self.device]
        for patch in self.spec.patches:
            cmd += ["--patch", patch]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.spec.overlay, str(worker_path(self.cache)),
                                                          env.get("PYTHONPATH")]))
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                          start_new_session=True)  # its own group: we can kill all it spawned
            log.write(f"=== pid {self._proc.pid}\n".encode())
        self._buffer = b""
        self._expected = deque([dict])  # the hello, read raw so its protocol version is checked first
        try:
            hello = self.receive(self.start_timeout)
            self.capabilities = contract.hello(hello)
        except contract.ContractError as exc:
            self.stop()
            raise WorkerError(self.label, str(exc)) from None
        except WorkerError:
            self.stop()
            raise
        return self.capabilities

    def submit(self, request: Any) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise WorkerError(self.label, "worker is not running", self.log_tail())
        try:
            self._proc.stdin.write(protocol.encode(contract.request_to_json(request)))
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None
        self._expected.append(contract.REPLIES[type(request)])

    def receive(self, timeout: float) -> Any:
        """The reply to the oldest request in flight; raises WorkerError on an error reply, death or timeout."""
        assert self._proc is not None and self._expected
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise WorkerError(self.label, f"timed out after {timeout:.0f}s", self.log_tail())
                if sel.select(min(left, 1.0)):
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        raise self._died()
                    self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        expected = self._expected.popleft()
        reply = protocol.decode(line)
        if not reply.get("ok"):
            err = contract.from_json(contract.ErrorReply, reply["error"])
            raise WorkerError(self.label, f"{err.type}: {err.message}", err.traceback, usable=err.usable,
                              kind=err.type)
        return reply["result"] if expected is dict else contract.from_json(expected, reply["result"])

    def call(self, request: Any, timeout: float) -> Any:
        self.submit(request)
        return self.receive(timeout)

    def _died(self) -> WorkerError:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self.kill()
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        log = self._log()
        return WorkerError(self.label, "\n".join([f"worker died ({how})", *crash_site(log)]), _tail(log))

    def log_tail(self, lines: int = 25) -> str:
        return _tail(self._log(), lines)

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()
        self._close_pipes()
        self._expected.clear()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask politely, then kill the whole process group."""
        if self._proc is None:
            return
        if self._proc.poll() is None and not self._expected:
            try:
                self.call(contract.ShutdownRequest(), timeout=timeout)
                self._proc.wait(timeout=timeout)
            except (WorkerError, subprocess.TimeoutExpired, OSError):
                pass
        self.kill()
        self._proc = None

    def _close_pipes(self) -> None:
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def restart(self) -> Capabilities:
        self.kill()
        return self.start()
