"""What a sandboxed program can see and do of the host: only its own root (interpreter, libraries,
/dev nodes, its /proc and tmpfs), and no new namespaces, mounts or chroot (the syscall filter).
Needs the full ProcessSandbox (root here: per-run uid and namespaces); skipped where the machine
does not give it a root of its own."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from actors.sandbox import ProcessSandbox, SandboxLimits

REPO = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(cpu_s=3, wall_s=6, memory_mb=512, max_processes=16, max_output_bytes=8192)


@pytest.fixture(scope="module")
def full() -> ProcessSandbox:
    sandbox = ProcessSandbox(LIMITS)
    protections = sandbox.probe().protections
    if not (protections["private_root"] and protections["syscall_filter"]):
        pytest.skip(f"this machine gives no private root or syscall filter: {protections}")
    return sandbox


PROBE = """
import os
for path in {paths!r}:
    try:
        with open(path) as handle:
            print(path, 'READ', handle.read(40).replace(chr(10), ' '))
    except OSError as exc:
        print(path, type(exc).__name__)
print('root', sorted(os.listdir('/')))
"""


def test_host_files_are_not_visible(full: ProcessSandbox) -> None:
    outside = tempfile.mkdtemp(prefix="stabledrl-isolation-")  # world-readable, outside the sandbox
    try:
        os.chmod(outside, 0o755)
        secret = Path(outside) / "secret.txt"
        secret.write_text("s3cr3t-outside")
        secret.chmod(0o644)
        paths = [str(REPO / "README.md"), str(REPO / "actors" / "rewards" / "code.py"), str(secret),
                 "/etc/passwd", "/etc/hostname", "/root/.bashrc", "/home", "/work", "/proc/1/environ"]
        result = full.run(PROBE.format(paths=paths))
    finally:
        shutil.rmtree(outside)
    print("\n" + result.stdout)
    assert result.status == "ok", result
    lines = result.stdout.splitlines()
    assert not any(" READ " in line for line in lines), lines
    assert "s3cr3t" not in result.stdout + result.stderr
    root = eval(lines[-1].split(" ", 1)[1])  # noqa: S307 - our own program's printed list
    assert "work" not in root and "home" not in root and "etc" not in root and {"tmp", "proc", "dev"} <= set(root)
    # The interpreter and the standard library are there, at their host paths.
    ok = full.run("import os, sys, json, decimal, sqlite3\nprint(os.path.exists(sys.executable))")
    assert (ok.status, ok.stdout) == ("ok", "True\n"), ok


SYSCALLS = """
import ctypes, os, sys, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    rc = getattr(libc, name)(*args)
    return 0 if rc == 0 else ctypes.get_errno()
NEWUSER, NEWNET, NEWNS = 0x10000000, 0x40000000, 0x00020000
print('unshare_user', call('unshare', NEWUSER))
print('unshare_net', call('unshare', NEWNET))
print('clone_user', call('syscall', {clone}, NEWUSER | 17, 0, 0, 0, 0))
print('mount', call('mount', b'tmpfs', b'/tmp', b'tmpfs', 0, None))
print('chroot', call('chroot', b'/tmp'))
box = []
t = threading.Thread(target=lambda: box.append(1))
t.start()
t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
print('ordinary', box, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]),
      subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True).stdout.strip())
"""


def test_no_new_namespaces_mounts_or_chroot(full: ProcessSandbox) -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("the clone syscall number below is x86_64's")
    result = full.run(SYSCALLS.format(clone=56))
    print("\n" + result.stdout + result.stderr)
    assert result.status == "ok", result
    out = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    for name in ("unshare_user", "unshare_net", "clone_user", "mount", "chroot"):
        assert out[name] == str(errno.EPERM), (name, out)
    assert out["ordinary"] == "[1] 7 42"  # threads, fork and a child interpreter still work
