"""``ProcessSandbox``: runs untrusted Python program text in local child processes, never in this one.

Each run gets a fresh working directory and, where the OS allows, a uid of its own, new network,
pid and mount namespaces, and rlimits; ``_bootstrap.py`` (the child side) documents the process tree.
The names in ``PROTECTIONS`` say which were active; a run reports them in ``SandboxResult.protections``
and ``require`` turns a missing one into a ``sandbox_error`` before the program starts.

This process (the parent) only: writes the program to a file, starts the bootstrap with a minimal
environment in a new session, feeds stdin through a pipe, reads stdout / stderr (each capped, the
rest drained and dropped) and the status pipe, and removes the directory. As safety nets it kills
the process group and every process of the run's uid (skipped when the run's pid namespace ended
cleanly: the kernel already killed everything in it), sweeps the shared tmp directories when there
was no private tmpfs, and has a backstop deadline in case the bootstrap itself fails.

Thread-safe and usable from many processes at once: each run has its own pipes and directory, and
uids are claimed from a pool with ``flock`` on per-uid lock files (released by the kernel if this
process dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from actors.sandbox.base import SandboxLimits, SandboxResult, cut_output
from actors.sandbox.procfs import kill_uid

BOOTSTRAP = Path(__file__).with_name("_bootstrap.py")
NAMESPACES = ("user", "network", "mount", "pid")
PROTECTIONS = {
    "process_group": "own session and process group, SIGKILLed when the run ends",
    "rlimits": "RLIMIT_CPU, AS, NPROC, NOFILE, FSIZE set; core dumps off",
    "temp_dir": "a fresh working directory, removed afterwards",
    "minimal_env": "PATH, LANG, HOME and TMPDIR only; nothing from this process's environment",
    "subreaper": "orphans (double forks, setsid) reparent to the bootstrap, which kills them",
    "no_new_privs": "set-uid binaries cannot raise privileges",
    "separate_uid": "a per-run unprivileged uid: other users' 0600 files and 0700 directories are "
                    "out of reach, RLIMIT_NPROC counts only this run, leftovers are found by uid",
    "user_namespace": "unprivileged fallback: namespaces through a user namespace (same uid outside)",
    "network_namespace": "a new network namespace: no interface up, not even loopback",
    "pid_namespace": "a new pid namespace: when its PID 1 ends, the kernel kills every process in it",
    "mount_namespace": "a private mount namespace (needed by the three below)",
    "private_proc": "a /proc showing only the run's own processes",
    "private_tmp": "a size-limited tmpfs on /tmp, /var/tmp, /dev/shm and the working directory",
    "readonly_root": "every inherited mount read-only",
    "private_root": "a root of its own (chroot): the interpreter, its libraries (and allowed packages), a few "
                    "/dev nodes, its /proc and its tmpfs; no other host path exists inside",
    "syscall_filter": "seccomp: no new namespaces (user namespaces included), no mount, chroot, bpf, ptrace, "
                      "io_uring, perf, keyring or module syscalls",
}
MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
# Uids are a machine-wide resource: their locks live at one fixed place, whatever TMPDIR or work_root.
UID_LOCK_DIR = Path("/tmp/stabledrl-sandbox-uids")
STATUS_CAP = 1 << 20
BACKSTOP_GRACE_S = 5.0


class _UidPool:
    """Per-run uids ``base .. base + count - 1``, claimed with a non-blocking ``flock``."""

    def __init__(self, lock_dir: Path, base: int, count: int) -> None:
        self.lock_dir, self.base, self.count = lock_dir, base, count
        self._next = (os.getpid() * 7919) % count  # only where the search starts: flock decides

    def claim(self) -> tuple[int, int]:
        """Returns (uid, lock fd); processes left by a crashed former holder are killed first."""
        start, self._next = self._next, (self._next + 1) % self.count
        for i in range(self.count):
            slot = (start + i) % self.count
            fd = os.open(self.lock_dir / str(slot), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            uid = self.base + slot
            if os.pread(fd, 5, 0) == b"busy\n":  # the last holder died without releasing cleanly
                kill_uid(uid)
            os.pwrite(fd, b"busy\n", 0)
            return uid, fd
        raise RuntimeError(f"all {self.count} sandbox uids from {self.base} are in use")

    @staticmethod
    def release(fd: int, clean: bool) -> None:
        if clean:
            os.pwrite(fd, b"free\n", 0)
            os.close(fd)
        # Not clean: keep the lock (and the fd) so that this uid is not handed out again.


def _work_root(work_root: str | None) -> Path:
    """``<tmp>/stabledrl-sandbox-<euid>``: 0711 when runs get their own uid (they may pass through but
    not list it), owned by us, not a symlink."""
    root = Path(work_root or tempfile.gettempdir()) / f"stabledrl-sandbox-{os.geteuid()}"
    mode = 0o711 if os.geteuid() == 0 else 0o700
    root.mkdir(mode=mode, exist_ok=True)
    st = os.lstat(root)
    if not root.is_dir() or root.is_symlink() or st.st_uid != os.geteuid():
        raise ValueError(f"sandbox work root {root} is not a directory owned by uid {os.geteuid()}; "
                         "remove it or pass another work_root")
    os.chmod(root, mode)
    return root


class ProcessSandbox:
    """The local sandbox (see the module docstring).

    Args:
        limits: default limits of a run (``run`` may pass others).
        python: interpreter of the runs (default: this one). Started as ``python -I -S -B``.
        separate_uid: give each run its own uid (only when this process is root).
        namespaces: which of ``NAMESPACES`` to try ("user" is tried only when not root).
        require: names from ``PROTECTIONS`` that must be active, else the run is a ``sandbox_error``.
        site_packages: let programs import this environment's site-packages (stdlib only otherwise).
        work_root: where run directories go (default: the system temp directory).
        uid_base, uid_count: the pool of per-run uids (machine-wide, locked under ``UID_LOCK_DIR``;
            containers sharing a kernel without user namespaces need disjoint ranges).
    """

    def __init__(self, limits: SandboxLimits | None = None, *, python: str | None = None,
                 separate_uid: bool = True, namespaces: Collection[str] = NAMESPACES,
                 require: Collection[str] = (), site_packages: bool = False, work_root: str | None = None,
                 uid_base: int = 1_700_000_000, uid_count: int = 4096) -> None:
        unknown = [n for n in require if n not in PROTECTIONS] + [n for n in namespaces if n not in NAMESPACES]
        if unknown:
            raise ValueError(f"unknown protection or namespace names {unknown}; known protections: "
                             f"{sorted(PROTECTIONS)}, namespaces: {list(NAMESPACES)}")
        self.limits = limits or SandboxLimits()
        self.python = python or sys.executable
        if not self.python or not os.access(self.python, os.X_OK):
            raise ValueError(f"sandbox interpreter {self.python!r} is not executable; pass python=PATH")
        self.namespaces, self.require, self.site_packages = list(namespaces), list(require), site_packages
        self.root = _work_root(work_root)
        self._uids = None
        if separate_uid and os.geteuid() == 0:
            UID_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
            if UID_LOCK_DIR.is_symlink() or UID_LOCK_DIR.stat().st_uid != 0:
                raise ValueError(f"{UID_LOCK_DIR} must be a directory owned by root; remove it")
            self._uids = _UidPool(UID_LOCK_DIR, uid_base, uid_count)
        self._probe: SandboxResult | None = None

    def probe(self) -> SandboxResult:
        """Run an empty program once (cached): its ``protections`` say what this machine allows."""
        if self._probe is None:
            self._probe = self.run("pass")
        return self._probe

    def run(self, program: str, *, stdin: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
        """Run ``program`` (Python source text) as ``main.py``; see ``SandboxResult`` for what comes
        back. A failure of this machine (no uid free, no file descriptors...) is a ``sandbox_error``."""
        limits = limits or self.limits
        if not isinstance(program, str) or not isinstance(stdin, str):
            raise TypeError("program and stdin must be str")
        try:
            uid, lock_fd = self._uids.claim() if self._uids else (None, -1)
        except (OSError, RuntimeError) as exc:
            return SandboxResult("sandbox_error", None, "", "", 0.0, {}, reason=f"no sandbox uid: {exc}")
        result = SandboxResult("sandbox_error", None, "", "", 0.0, {}, reason="the sandbox failed to start")
        ended_cleanly, survivors, workdir = False, [], ""
        try:
            workdir = tempfile.mkdtemp(prefix="run-", dir=self.root)
            main = Path(workdir) / "main.py"
            main.write_text(program, encoding="utf-8", errors="surrogatepass")
            os.chmod(main, 0o644)
            if uid is not None:
                os.chown(workdir, uid, uid)
            result, ended_cleanly = self._execute(workdir, uid, stdin, limits)
        except OSError as exc:
            result = replace(result, reason=f"the sandbox failed to start: {exc}")
        finally:
            if uid is not None:  # safety nets, skipped where the namespaces' end already did the work
                if not (ended_cleanly and result.protections.get("pid_namespace")):
                    survivors = kill_uid(uid)
                if not (ended_cleanly and result.protections.get("private_tmp")):
                    _remove_owned_by(uid, SHARED_TMP_DIRS)
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            if lock_fd >= 0:
                _UidPool.release(lock_fd, clean=not survivors)
        if survivors:  # never seen; the uid stays locked so that no later run shares it
            return replace(result, status="sandbox_error", exit_code=None,
                           reason=f"processes {survivors} of uid {uid} survived SIGKILL")
        return result

    def _execute(self, workdir: str, uid: int | None, stdin: str,
                 limits: SandboxLimits) -> tuple[SandboxResult, bool]:
        """Start the bootstrap and collect its run. Returns (result, whether the bootstrap ended on
        its own after reaping the run's processes)."""
        status_r, status_w = os.pipe()
        cfg = {
            "status_fd": status_w, "parent_pid": os.getpid(), "workdir": workdir,
            "uid": "none" if uid is None else uid, "gid": "none" if uid is None else uid,
            "namespaces": ",".join(self.namespaces), "require": ",".join(self.require),
            "site_packages": int(self.site_packages),
            **{k: getattr(limits, k) for k in ("cpu_s", "wall_s", "memory_mb", "max_processes",
                                               "max_open_files", "max_file_mb", "max_tmp_mb")},
        }
        env = {"PATH": MINIMAL_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        data = stdin.encode("utf-8", errors="surrogatepass")
        stdin_r, stdin_w = os.pipe() if data else (subprocess.DEVNULL, -1)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [self.python, "-I", "-S", "-B", str(BOOTSTRAP), *(f"{k}={v}" for k, v in cfg.items())],
                stdin=stdin_r, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,),
                start_new_session=True, env=env, cwd=workdir, close_fds=True,
            )
        except OSError as exc:
            os.close(status_r)
            if stdin_w >= 0:
                os.close(stdin_w)
            reason = f"could not start {self.python}: {exc}"
            return SandboxResult("sandbox_error", None, "", "", 0.0, {}, reason=reason), False
        finally:
            os.close(status_w)
            if stdin_w >= 0:
                os.close(stdin_r)
        backstop = start + limits.wall_s + max(BACKSTOP_GRACE_S, 0.25 * limits.wall_s)
        out, err, status, killed = _collect(proc, status_r, (stdin_w, data), backstop, limits.max_output_bytes, uid)
        try:  # the bootstrap has closed its pipes, so it is exiting: wait without reaping, kill its
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # group while the pgid is ours
            os.killpg(proc.pid, signal.SIGKILL)
        except (ChildProcessError, ProcessLookupError, PermissionError):
            pass
        proc.wait()
        messages = _parse_status(status)
        result = _interpret(out, err, messages, killed, proc.returncode, time.monotonic() - start, limits)
        return result, "wall_s" in messages and not killed and proc.returncode == 0


def _remove_owned_by(uid: int, dirs: Collection[str]) -> None:
    """Without a private tmpfs a run may leave files in the world-writable directories: remove the
    entries directly inside ``dirs`` that its uid owns (deeper world-writable places are not swept)."""
    for directory in dirs:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_uid != uid:
                continue
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _collect(proc: subprocess.Popen, status_r: int, stdin: tuple[int, bytes], backstop: float, cap: int,
             uid: int | None) -> tuple[bytearray, bytearray, bytearray, bool]:
    """Feed stdin through its pipe (consumed once read: a program cannot rewind it), and read stdout,
    stderr (each kept up to ``cap`` + 1 bytes) and the status pipe until all close. Past ``backstop``
    kill the run's uid, and past one more grace period the bootstrap's group, then read what is left.
    Returns (out, err, status, whether the backstop had to kill)."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    buffers = {out: bytearray(), err: bytearray(), status_r: bytearray()}
    caps = {out: cap + 1, err: cap + 1, status_r: STATUS_CAP}
    stdin_w, pending = stdin[0], memoryview(stdin[1])
    stage = 0  # 1: the backstop passed, the run's uid was killed; 2: the bootstrap was killed too
    with selectors.DefaultSelector() as selector:
        for fd in (*buffers, stdin_w):
            if fd >= 0:
                os.set_blocking(fd, False)
                selector.register(fd, selectors.EVENT_WRITE if fd == stdin_w else selectors.EVENT_READ)
        while selector.get_map():
            remaining = backstop - time.monotonic()
            if remaining <= 0 and stage < 2:
                # A slow bootstrap (a loaded machine) is still reaping: kill the run's uid first and
                # give it time; only then kill its group (orphans may then be left to init as zombies).
                stage = 1 if uid is not None and stage == 0 else 2
                _kill_run(pgid=proc.pid if stage == 2 else None, uid=uid)
                backstop = time.monotonic() + BACKSTOP_GRACE_S
                continue
            if remaining <= 0:  # a holder of the pipes survived: stop reading
                break
            for key, _ in selector.select(remaining):
                if key.fd == stdin_w:
                    try:
                        pending = pending[os.write(stdin_w, pending[:1 << 16]):]
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed its stdin: the rest is not wanted
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(stdin_w)
                        os.close(stdin_w)
                    continue
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    selector.unregister(key.fd)
                    continue
                room = caps[key.fd] - len(buffers[key.fd])
                if room > 0:
                    buffers[key.fd] += data[:room]
    if stdin_w >= 0 and pending:
        os.close(stdin_w)
    os.close(status_r)
    return buffers[out], buffers[err], buffers[status_r], stage > 0


def _kill_run(pgid: int | None, uid: int | None) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if uid is not None:
        kill_uid(uid)


def _parse_status(raw: bytes) -> dict:
    """Read the status pipe's ``<kind> <text>`` lines (see ``_bootstrap.py``) into one dict: the
    first ``exit`` / ``signal`` / ``error`` wins, ``setup`` becomes a set, ``note`` a dict."""
    merged: dict = {"notes": {}}
    for line in raw.decode("utf-8", errors="replace").splitlines():
        kind, _, text = line.partition(" ")
        if kind == "note":
            name, _, why = text.partition(" ")
            merged["notes"][name] = why
        elif kind == "setup":
            merged["setup"] = set(text.split(","))
        elif kind in ("exit", "signal") and "exit" not in merged and "signal" not in merged:
            try:
                merged[kind] = int(text)
            except ValueError:
                continue
        elif kind == "wall_s":
            try:
                merged[kind] = float(text)
            except ValueError:
                continue
        elif kind in ("error", "supervisor", "timeout") and kind not in merged:
            merged[kind] = text or True
    return merged


def _interpret(out: bytes, err: bytes, status: dict, backstop_killed: bool, bootstrap_rc: int | None,
               measured_s: float, limits: SandboxLimits) -> SandboxResult:
    """Turn the collected output and the merged status messages into a ``SandboxResult``."""
    stdout, cut_out = cut_output(bytes(out), limits.max_output_bytes)
    stderr, cut_err = cut_output(bytes(err), limits.max_output_bytes)
    setup = status.get("setup", set())
    protections = {name: name in setup for name in PROTECTIONS}
    protections["temp_dir"] = protections["minimal_env"] = True
    wall = status.get("wall_s", measured_s)

    def result(kind: str, code: int | None, reason: str) -> SandboxResult:
        return SandboxResult(kind, code, stdout, stderr, wall, protections, cut_out or cut_err, reason)

    if "error" in status or not setup:  # the sandbox failed before the program started
        why = status.get("error") or f"the sandbox did not start (bootstrap exit {bootstrap_rc}): {stderr[-500:]}"
        notes = "; ".join(f"{k}: {v}" for k, v in status["notes"].items())
        return result("sandbox_error", None, f"{why}" + (f" [{notes}]" if notes else ""))
    if "timeout" in status or backstop_killed:
        return result("timeout", None, f"wall-clock limit of {limits.wall_s} s reached; the run's processes were killed")
    if "exit" in status:
        code = status["exit"]
        return result("ok" if code == 0 else "error", code, "" if code == 0 else f"exit code {code}")
    if "signal" in status:
        return result("killed", -status["signal"], _signal_reason(status["signal"], limits))
    return result("killed", None, f"the run's supervisor died ({status.get('supervisor', 'no exit status')})")


def _signal_reason(sig: int, limits: SandboxLimits) -> str:
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    if sig == signal.SIGXCPU:
        return f"killed by {name}: CPU limit of {limits.cpu_s} s reached"
    if sig == signal.SIGXFSZ:
        return f"killed by {name}: file size limit of {limits.max_file_mb} MiB reached"
    return f"killed by {name}"
