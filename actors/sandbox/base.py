"""What every code sandbox shares: the limits a run gets, the result it returns, and the ``Sandbox``
protocol that the code reward calls. Implementations: ``ProcessSandbox`` (local child processes,
``process.py``) and ``HttpSandbox`` (a Sandbox-Fusion-style ``run_code`` service, ``remote.py``).

Statuses of a run:

- ``ok``: the program exited with code 0;
- ``error``: it exited with a non-zero code (an uncaught exception exits with 1, and so does a
  ``MemoryError`` raised when the address-space limit refuses an allocation);
- ``timeout``: the wall-clock limit ran out and every process of the run was killed;
- ``killed``: a signal ended it (SIGXCPU or SIGKILL from the CPU limit, SIGKILL from outside...);
- ``sandbox_error``: the sandbox itself failed (setup, a required protection missing, the remote
  service unreachable); the program may not have run at all.

A zero exit status is not proof that tests passed: the program text can call ``os._exit(0)`` before
its tests run, and anything else in its process is its own to change. The code reward therefore
decides no verdict inside a run (``actors/rewards/code_harness.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

STATUSES = ("ok", "error", "timeout", "killed", "sandbox_error")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run.

    Attributes:
        cpu_s: CPU seconds per process (RLIMIT_CPU, rounded up to whole seconds; SIGXCPU at the
            limit, SIGKILL one second later).
        wall_s: wall-clock seconds for the whole run; then every process of the run is killed.
        memory_mb: address space per process (RLIMIT_AS), in MiB.
        max_processes: processes and threads the run may have at once (RLIMIT_NPROC of its own uid).
        max_open_files: file descriptors per process (RLIMIT_NOFILE).
        max_file_mb: largest file a process may write (RLIMIT_FSIZE), in MiB.
        max_output_bytes: stdout and stderr are each cut to this many bytes (the rest is drained).
        max_tmp_mb: size of the private tmpfs holding the working directory, /tmp, /var/tmp and
            /dev/shm, in MiB (only where a mount namespace is available).
    """

    cpu_s: float = 5.0
    wall_s: float = 10.0
    memory_mb: int = 512
    max_processes: int = 16
    max_open_files: int = 64
    max_file_mb: int = 16
    max_output_bytes: int = 65536
    max_tmp_mb: int = 64

    def __post_init__(self) -> None:
        checks = {
            "cpu_s": (self.cpu_s, 0.01, 3600.0),
            "wall_s": (self.wall_s, 0.01, 3600.0),
            "memory_mb": (self.memory_mb, 32, 1 << 20),
            "max_processes": (self.max_processes, 1, 4096),
            "max_open_files": (self.max_open_files, 16, 1 << 20),
            "max_file_mb": (self.max_file_mb, 0, 1 << 20),
            "max_output_bytes": (self.max_output_bytes, 256, 1 << 30),
            "max_tmp_mb": (self.max_tmp_mb, 1, 1 << 20),
        }
        for name, (value, low, high) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"SandboxLimits.{name} must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"SandboxLimits.{name} = {value!r} is outside [{low}, {high}]; pick a value in range")


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one run.

    Attributes:
        status: one of ``STATUSES`` (see the module docstring).
        exit_code: the exit code for ``ok`` / ``error``; minus the signal number for ``killed``;
            None for ``timeout`` and ``sandbox_error``.
        stdout, stderr: decoded as UTF-8 (invalid bytes replaced), each cut to ``max_output_bytes``.
        wall_s: seconds the program ran (from its start to the end of its last process).
        protections: which protections were active for this run (``ProcessSandbox`` documents
            the names); a remote service reports ``remote_service``.
        truncated: True when stdout or stderr was cut.
        reason: one line saying why, in words (empty for ``ok``).
    """

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    protections: dict[str, bool] = field(default_factory=dict)
    truncated: bool = False
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"SandboxResult.status {self.status!r} is not one of {STATUSES}")


@runtime_checkable
class Sandbox(Protocol):
    """Runs one Python program (its source text) and reports what happened. Never raises on the
    program's behaviour; a failure of the sandbox itself is a ``sandbox_error`` result."""

    def run(self, program: str, *, stdin: str = "", limits: SandboxLimits | None = None) -> SandboxResult: ...


def cut_output(data: bytes, max_bytes: int) -> tuple[str, bool]:
    """Decode ``data`` as UTF-8 (invalid bytes replaced) after cutting it to ``max_bytes`` bytes.

    Returns (text, truncated)."""
    truncated = len(data) > max_bytes
    return data[:max_bytes].decode("utf-8", errors="replace"), truncated
