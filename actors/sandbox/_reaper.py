"""Waiting for and killing the run's processes from the bootstrap (imported by ``_bootstrap.py`` only;
standard library only, and light: the bootstrap's start-up time is every run's)."""

from __future__ import annotations

import os
import select
import time

SIGKILL = 9


def wait_with_timeout(pid: int, seconds: float) -> tuple[int | None, float]:
    """Wait for child ``pid`` at most ``seconds``. Returns (wait status or None on timeout, elapsed)."""
    start = time.monotonic()
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = -1
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        elapsed = time.monotonic() - start
        if done:
            break
        if elapsed >= seconds:
            return None, elapsed
        if pidfd >= 0:
            select.select([pidfd], [], [], seconds - elapsed)
        else:
            time.sleep(min(0.005, seconds - elapsed))
    if pidfd >= 0:
        os.close(pidfd)
    return status, elapsed


def child_pids(ppid: int) -> list[int]:
    """Pids whose parent is ``ppid`` (from /proc/<pid>/stat: CONFIG_PROC_CHILDREN may be absent)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(ppid):
            found.append(int(name))
    return found


def kill_descendants(timeout_s: float = 10.0) -> None:
    """SIGKILL and reap every child of this process until none is left. As a subreaper this process
    inherits the orphans of the run (double forks, setsid), so this empties the whole subtree."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return  # the common case once the supervisor is reaped: nothing to scan for
        children = child_pids(os.getpid())
        for child in children:
            try:  # noqa: SIM105 (contextlib would cost this start-up-bound process an import)
                os.kill(child, SIGKILL)
            except ProcessLookupError:
                pass
        if not children:
            time.sleep(0.001)


def kill_uid_at_once(uid: int) -> None:
    """SIGKILL every process of ``uid`` in one step: a helper that becomes ``uid`` calls kill(-1),
    which the kernel delivers to all of them at once (no fork can slip between), sparing the helper."""
    helper = os.fork()
    if helper == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, SIGKILL)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(helper, 0)
