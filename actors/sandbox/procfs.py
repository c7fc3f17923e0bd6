"""Finding and killing a run's processes through /proc, by uid: a process cannot change its real,
effective or saved uid without privilege, so whatever a run started (detached with ``setsid``,
double-forked, renamed, with a cleared environment) is found by the uid it was started as."""

from __future__ import annotations

import contextlib
import os
import signal
import time


def processes_of_uid(uid: int, include_zombies: bool = False) -> list[int]:
    """Pids (in this pid namespace) whose real, effective or saved uid is ``uid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as handle:
                text = handle.read()
        except OSError:  # it exited meanwhile
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        uids = fields.get("Uid", "").split()[:3]
        state = fields.get("State", "?").split()[0] if fields.get("State") else "?"
        if str(uid) in uids and (include_zombies or state not in ("Z", "X")):
            found.append(int(name))
    return found


def kill_uid(uid: int, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every live process of ``uid`` until none is left or ``timeout_s`` passes.

    Returns the pids still alive at the end (empty on success). Converges against a fork bomb
    because a process with a pending SIGKILL cannot fork, and RLIMIT_NPROC bounds the rest.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        pids = processes_of_uid(uid)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)
