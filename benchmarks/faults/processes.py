"""Real OS processes of a run: workers (``outboxkit worker``) and the publisher.

Every process gets the run's ``OKF_*`` environment, writes its output to a log file in the
run's work directory, and is tracked by pid so that the run only ever signals processes it
started. :meth:`ProcessGroup.close` always ends them all (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import attrs

from benchmarks.faults.settings import RunSpec

#: The repository root: the worker imports ``benchmarks.faults.app`` from here.
ROOT = Path(__file__).resolve().parents[2]
#: Graceful stop budget handed to ``outboxkit worker --stop-timeout``.
WORKER_STOP_TIMEOUT = 10.0
#: What ``outboxkit worker`` prints once its engine runs.
RUNNING_LINE = "worker running"


@attrs.define
class Child:
    """One started process."""

    name: str
    role: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        """Alive, and (a worker) past start-up: it printed that its engine runs."""
        if not self.alive:
            return False
        if self.role == "publish":
            return True
        try:
            return RUNNING_LINE in self.log.read_text(errors="replace")
        except OSError:
            return False


class ProcessGroup:
    """The processes of one scenario run."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.children: list[Child] = []
        self._counter = 0

    def _spawn(self, name: str, role: str, argv: list[str]) -> Child:
        self._counter += 1
        log = Path(self.spec.workdir) / f"{name}-{self._counter}.log"
        env = {**os.environ, **self.spec.environment(), "OKF_ROLE": role}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        child = Child(name=f"{name}-{self._counter}", role=role, process=process, log=log)
        self.children.append(child)
        return child

    def start_worker(self, role: str = "both") -> Child:
        """``python -m outboxkit worker benchmarks.faults.app:build`` in ``role``."""
        argv = [
            sys.executable,
            "-m",
            "outboxkit",
            "--log-level",
            "WARNING",
            "worker",
            "benchmarks.faults.app:build",
            "--stop-timeout",
            str(WORKER_STOP_TIMEOUT),
        ]
        return self._spawn(f"worker-{role}", role, argv)

    def start_publisher(self) -> Child:
        return self._spawn(
            "publisher", "publish", [sys.executable, "-m", "benchmarks.faults.publisher"]
        )

    def workers(self, role: str | None = None) -> list[Child]:
        return [
            c
            for c in self.children
            if c.alive and c.role != "publish" and (role is None or c.role == role)
        ]

    def running_workers(self, role: str | None = None) -> list[Child]:
        """The live workers of ``role`` whose engine already runs (see :attr:`Child.running`)."""
        return [c for c in self.workers(role) if c.running]

    @staticmethod
    def kill9(child: Child) -> bool:
        """SIGKILL: no stop, no cleanup, in-flight work simply vanishes.

        Whether this call killed it: ``False`` when the process had already ended, so a
        caller counts only kills that happened.
        """
        if not child.alive:
            return False
        try:
            os.kill(child.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        child.process.wait(timeout=10)
        return child.process.returncode == -signal.SIGKILL

    def close(self, timeout: float = WORKER_STOP_TIMEOUT + 5) -> list[str]:
        """Stop every live process gracefully, then kill stragglers; returns those killed."""
        live = [c for c in self.children if c.alive]
        for child in live:
            child.process.send_signal(signal.SIGTERM)
        forced = []
        for child in live:
            try:
                child.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                forced.append(child.name)
                self.kill9(child)
        return forced

    def error_lines(
        self, limit: int = 5, expected: tuple[str, ...] = ("poisoned payload",)
    ) -> tuple[int, list[str]]:
        """How many ERROR/Traceback lines the workers logged (but the ``expected`` ones, the
        poisoned events going dead), and the first few distinct."""
        count = 0
        seen: list[str] = []
        for child in self.children:
            text = child.log.read_text(errors="replace") if child.log.exists() else ""
            in_traceback = False
            for line in text.splitlines():
                if line.startswith("Traceback"):
                    in_traceback = True
                    continue
                if in_traceback:
                    # The exception line ends a traceback: the first unindented line.
                    if not line or line.startswith((" ", "During handling", "The above")):
                        continue
                    in_traceback = False
                    short = "raised " + line[:160]
                elif " ERROR " in line and not any(e in line for e in expected):
                    short = line.split(": ", 1)[-1][:160]
                else:
                    continue
                count += 1
                if short not in seen and len(seen) < limit:
                    seen.append(short)
        return count, seen
