"""Child side of ``ProcessSandbox``: trusted code, standard library only, started by the parent as
``python -I -S -B _bootstrap.py key=value ...`` in a new session. It builds the process tree below,
runs the program's source text with ``exec`` inside the last (unprivileged) process, and reports
over a status pipe. It never evaluates anything the parent sent except that program, in that process.

Process tree (host view)::

    parent           reads stdout / stderr / status, backstop deadline, kills leftovers by uid
     └ bootstrap     namespaces and mounts, wall-clock timer, subreaper: kills and reaps leftovers
        └ supervisor PID 1 of the new pid namespace: reaps orphans, reports the program's exit status
           └ program rlimits, no_new_privs, the per-run uid: runs main.py in this interpreter

Status pipe: one ``<kind> <text>`` line per message: ``note <protection> <why it failed>`` and
``setup <active protections, comma-separated>`` once the program's process is ready, then
``exit <code>`` or ``signal <number>`` from the supervisor, ``timeout``, ``supervisor <what killed
it>``, ``wall_s <seconds>`` from the bootstrap, or ``error <text>`` when the sandbox itself failed.

Each protection is tried independently; what failed is named in ``notes`` (the parent decides
whether a missing one is fatal through ``require``).
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

# Kept light on purpose: json, signal and traceback pull in re and enum, which would add tens of
# milliseconds to every run; the config is ``key=value`` arguments and the status pipe plain lines.
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
SIGKILL = 9
_LIBC = ctypes.CDLL(None, use_errno=True)
_TYPES = {"status_fd": int, "parent_pid": int, "uid": int, "gid": int, "cpu_s": float, "wall_s": float,
          "memory_mb": int, "max_processes": int, "max_open_files": int, "max_file_mb": int,
          "max_tmp_mb": int, "site_packages": int}
_LISTS = ("namespaces", "require")


def sibling(name: str):  # noqa: ANN201 - a module
    """Import a module that sits next to this file (the bootstrap runs with ``-I``: not on the path)."""
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    try:
        return __import__(name)
    finally:
        sys.path.pop()


def parse_config(args: list[str]) -> dict:
    """``key=value`` arguments: ints, floats, comma lists, ``none`` for an absent uid / gid."""
    cfg: dict = {}
    for arg in args:
        key, value = arg.split("=", 1)
        if key in _LISTS:
            cfg[key] = [v for v in value.split(",") if v]
        elif key in _TYPES:
            cfg[key] = None if value == "none" else _TYPES[key](value)
        else:
            cfg[key] = value
    return cfg


def libc_call(name: str, *args: object) -> None:
    """Call a libc function that returns 0 on success; raise OSError naming it otherwise."""
    if getattr(_LIBC, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def prctl(option: int, value: int) -> None:
    libc_call("prctl", option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


class Reporter:
    """Writes ``<kind> <text>`` lines to the status pipe (best effort: the parent may be gone)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: str, text: object = "") -> None:
        if self.fd < 0:
            return
        data = f"{kind} {text}".replace("\n", " ").encode("utf-8", errors="replace") + b"\n"
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass

    def setup(self, prot: dict, notes: dict) -> None:
        for name, text in notes.items():
            self.send("note", f"{name} {text}")
        self.send("setup", ",".join(name for name, on in prot.items() if on))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def enter_namespaces(cfg: dict, prot: dict, notes: dict) -> str:
    """Unshare the wanted namespaces (each independently) and set up mounts. Returns the working
    directory the program should use (the host one, or its copy on the private tmpfs)."""
    want = set(cfg["namespaces"])
    if "user" in want and os.geteuid() != 0:
        try:
            uid, gid = os.geteuid(), os.getegid()
            libc_call("unshare", CLONE_NEWUSER)
            for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{path}", "w") as handle:
                    handle.write(text)
            prot["user_namespace"] = True
        except OSError as exc:
            notes["user_namespace"] = str(exc)
    for name, flag in (("network", CLONE_NEWNET), ("pid", CLONE_NEWPID)):
        if name in want:
            try:
                libc_call("unshare", flag)
                prot[f"{name}_namespace"] = True
            except OSError as exc:
                notes[f"{name}_namespace"] = str(exc)
    workdir = cfg["workdir"]
    if "mount" in want:
        try:
            libc_call("unshare", CLONE_NEWNS)
            prot["mount_namespace"] = True
        except OSError as exc:
            notes["mount_namespace"] = str(exc)
            return workdir
        # Imported only here so that a sandbox without mounts never loads them.
        _mounts = sibling("_mounts")
        sibling("_root")  # _mounts imports it from sys.modules
        workdir = _mounts.private_mounts(cfg, prot, notes)
    return workdir


def count_tasks_of(uid: int) -> int:
    """Threads of processes whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1 0").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


def set_rlimits(cfg: dict, prot: dict) -> None:
    """RLIMIT_CPU (SIGXCPU at the soft limit, SIGKILL one second later), AS, NPROC, NOFILE, FSIZE, CORE."""
    cpu = max(1, int(cfg["cpu_s"] + 0.999))
    pairs = {
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_AS: cfg["memory_mb"] << 20,
        resource.RLIMIT_NOFILE: cfg["max_open_files"],
        resource.RLIMIT_FSIZE: cfg["max_file_mb"] << 20,
        resource.RLIMIT_NPROC: cfg["nproc"],
    }
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for kind, value in pairs.items():
        resource.setrlimit(kind, (value, value))
    prot["rlimits"] = True


def drop_capabilities() -> None:
    """Empty the effective, permitted and inheritable capability sets (used in a user namespace,
    where the process that created it holds every capability inside it)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    libc_call("capset", header, data)


def stdlib_problem() -> str:
    """An empty string when this process can read the standard library; otherwise the reason."""
    lib = os.path.dirname(os.__file__)
    if os.access(os.path.join(lib, "json"), os.R_OK | os.X_OK):
        return ""
    return (f"the standard library {lib} is not readable by uid {os.getuid()}: install Python under a "
            "world-readable prefix, or allow a mount namespace, or run without separate_uid")


def drop_privileges(cfg: dict, prot: dict, notes: dict) -> None:
    """rlimits, no_new_privs, then the run's uid (or no capabilities inside a user namespace)."""
    set_rlimits(cfg, prot)
    try:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        prot["no_new_privs"] = True
    except OSError as exc:
        notes["no_new_privs"] = str(exc)
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
        prot["separate_uid"] = True
    elif prot.get("user_namespace"):
        drop_capabilities()
    prctl(PR_SET_PDEATHSIG, SIGKILL)  # after setuid: a credential change clears it
    os.umask(0o077)
    if prot.get("no_new_privs"):
        try:
            _seccomp.install(_LIBC)
            prot["syscall_filter"] = True
        except OSError as exc:
            notes["syscall_filter"] = str(exc)


def become_program(cfg: dict, prot: dict, notes: dict, reporter: Reporter) -> None:
    """In the program's process: drop privileges, check what is required, report, close the pipe."""
    try:
        drop_privileges(cfg, prot, notes)
        problem = stdlib_problem()
    except Exception as exc:
        problem = f"sandbox setup failed in the program's process: {exc!r}"
    missing = [name for name in cfg["require"] if not prot.get(name)]
    if missing and not problem:
        why = "; ".join(f"{name}: {notes.get(name, 'not attempted')}" for name in missing)
        problem = f"required protections not active: {why}"
    reporter.setup(prot, notes)
    if problem:
        reporter.send("error", problem)
        os._exit(1)
    if os.getppid() != cfg["supervisor_pid"]:  # the supervisor died before the pdeath signal was set
        os._exit(1)
    reporter.close()


def run_program(source: str, site_packages: bool) -> None:
    """Execute the program as ``__main__`` (file name ``main.py``). An exception is printed by
    ``sys.excepthook`` without this file's frame and exits with code 1, as in a script run."""
    import builtins

    if site_packages:
        import site

        site.main()
    module = type(sys)("__main__")
    module.__file__ = "main.py"
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    sys.argv = ["main.py"]
    sys.path.insert(0, os.getcwd())  # as ``python main.py`` would: files it writes can be imported
    try:
        exec(compile(source, "main.py", "exec"), module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:  # the program's own error: report it as Python would
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        sys.exit(1)


def supervise(cfg: dict, prot: dict, notes: dict, reporter: Reporter, source: str) -> None:
    """The supervisor: PID 1 of the new pid namespace when there is one. Forks the program, reaps
    every child until the program is gone, reports its status and exits (which, as PID 1, makes the
    kernel kill everything left in the namespace)."""
    prctl(PR_SET_PDEATHSIG, SIGKILL)
    root = cfg.get("new_root", "")
    if prot.get("pid_namespace") and prot.get("mount_namespace"):
        try:  # a /proc of the new pid namespace: the program sees only its own processes
            libc_call("mount", b"proc", (root + "/proc").encode(), b"proc",
                      ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC), None)
            prot["private_proc"] = True
        except OSError as exc:
            notes["private_proc"] = str(exc)
    if root:  # the program's own root (_root.py); its processes all start from here
        os.chroot(root)
        os.chdir(cfg["workdir"])
    cfg["supervisor_pid"] = os.getpid()
    program = os.fork()
    if program == 0:
        become_program(cfg, prot, notes, reporter)
        run_program(source, bool(cfg["site_packages"]))
        sys.exit(0)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            reporter.send("error", "the program's process vanished")
            os._exit(1)
        if pid == program:
            break
    if os.WIFSIGNALED(status):
        reporter.send("signal", os.WTERMSIG(status))
    else:
        reporter.send("exit", os.waitstatus_to_exitcode(status))
    os._exit(0)


def setup(cfg: dict, prot: dict, notes: dict) -> str:
    """The bootstrap's own setup; returns the program's source text."""
    prctl(PR_SET_PDEATHSIG, SIGKILL)
    if os.getppid() != cfg["parent_pid"]:  # the parent died before the pdeath signal was set
        os._exit(1)
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        prot["subreaper"] = True
    except OSError as exc:
        notes["subreaper"] = str(exc)
    cfg["nproc"] = cfg["max_processes"]
    if cfg["uid"] is None:
        # Without a uid of its own the run shares RLIMIT_NPROC's count with every process of this
        # user (also inside a user namespace, as measured here): allow what exists now, plus the
        # supervisor, plus max_processes for the program and its children.
        cfg["nproc"] += count_tasks_of(os.getuid()) + 1
    with open(os.path.join(cfg["workdir"], "main.py"), encoding="utf-8", errors="surrogatepass") as handle:
        source = handle.read()
    os.chdir(enter_namespaces(cfg, prot, notes))
    return source


_reaper = sibling("_reaper")
_seccomp = sibling("_seccomp")  # loaded here: the program's root (chroot) does not hold this directory


def main(argv: list[str]) -> None:
    # The interpreter's real path: a private /tmp (or a covered home) may hide the path it was started
    # by (e.g. a venv under /tmp), while its real directories are bound back in; programs that run
    # sys.executable must find it.
    sys.executable = os.path.realpath(sys.executable)
    cfg = parse_config(argv[1:])
    reporter = Reporter(cfg["status_fd"])
    prot: dict[str, bool] = {"process_group": True}
    notes: dict[str, str] = {}
    try:
        source = setup(cfg, prot, notes)
    except Exception as exc:
        reporter.send("error", f"sandbox setup failed: {exc!r}")
        os._exit(1)
    supervisor = os.fork()
    if supervisor == 0:
        supervise(cfg, prot, notes, reporter, source)
    status, elapsed = _reaper.wait_with_timeout(supervisor, cfg["wall_s"])
    if status is None:
        os.kill(supervisor, SIGKILL)
        reporter.send("timeout")
        status = os.waitpid(supervisor, 0)[1]
    elif os.WIFSIGNALED(status):
        reporter.send("supervisor", f"killed by signal {os.WTERMSIG(status)}")
    if cfg["uid"] is not None and not prot.get("pid_namespace"):
        _reaper.kill_uid_at_once(cfg["uid"])  # with a pid namespace the supervisor's end did this already
    _reaper.kill_descendants()
    reporter.send("wall_s", f"{elapsed:.6f}")
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
