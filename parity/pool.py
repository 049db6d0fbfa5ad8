"""Worker processes seen from the orchestrator.

Each backend runs as ``python -m parity.worker`` in its own interpreter, one
engine import for many models. Requests and replies are JSON lines over pipes
(never a listening socket). A worker that dies or overruns its timeout becomes
a :class:`WorkerError` carrying the tail of its stderr log; the caller decides
whether to restart it.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from parity.backends import BackendSpec
from parity.worker import protocol

PACKAGE_ROOT = Path(__file__).resolve().parent


class WorkerError(RuntimeError):
    def __init__(self, label: str, reason: str, log_tail: str = ""):
        self.label, self.reason, self.log_tail = label, reason, log_tail
        super().__init__(f"{label}: {reason}" + (f"\n--- worker log (tail) ---\n{log_tail}" if log_tail else ""))


def worker_path(cache: Path) -> Path:
    """A directory holding only a link to this parity package, for the worker's PYTHONPATH.

    The orchestrator's own site-packages must not leak into engine environments.
    """
    root = cache / "workerpath" / hashlib.sha256(str(PACKAGE_ROOT).encode()).hexdigest()[:12]
    link = root / "parity"
    if not link.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"parity.{os.getpid()}"
        tmp.symlink_to(PACKAGE_ROOT, target_is_directory=True)
        os.replace(tmp, link)
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
        self.hello: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._pending = 0

    @property
    def label(self) -> str:
        return self.spec.label

    def start(self) -> dict[str, Any]:
        cmd = [self.python, "-m", "parity.worker", "--adapter", self.spec.definition.adapter, "--device", self.device]
        for patch in self.spec.patches:
            cmd += ["--patch", patch]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(worker_path(self.cache)), env.get("PYTHONPATH")]))
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                          start_new_session=True)  # its own group: we can kill all it spawned
            log.write(f"=== pid {self._proc.pid}\n".encode())
        self._buffer = b""
        self._pending = 1  # the hello
        try:
            self.hello = self.receive(self.start_timeout)
        except WorkerError:
            self.stop()
            raise
        return self.hello

    def submit(self, op: str, **payload: Any) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise WorkerError(self.label, "worker is not running", self.log_tail())
        try:
            self._proc.stdin.write(protocol.encode({"op": op, **payload}))
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None
        self._pending += 1

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next reply's result; raises WorkerError on an error reply, death or timeout."""
        assert self._proc is not None and self._pending > 0
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
        self._pending -= 1
        reply = protocol.decode(line)
        if not reply.get("ok"):
            err = reply.get("error", {})
            raise WorkerError(self.label, f"{err.get('type')}: {err.get('message')}", err.get("traceback", ""))
        return reply["result"]

    def call(self, op: str, timeout: float, **payload: Any) -> dict[str, Any]:
        self.submit(op, **payload)
        return self.receive(timeout)

    def _died(self) -> WorkerError:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self.kill()
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        return WorkerError(self.label, f"worker died ({how})", self.log_tail())

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

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
        self._pending = 0

    def stop(self, timeout: float = 30.0) -> None:
        """Ask politely, then kill the whole process group."""
        if self._proc is None:
            return
        if self._proc.poll() is None and self._pending == 0:
            try:
                self.call("shutdown", timeout=timeout)
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

    def restart(self) -> dict[str, Any]:
        self.kill()
        return self.start()
