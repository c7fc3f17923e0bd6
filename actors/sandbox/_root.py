"""The program's own root directory (imported by ``_mounts.py`` only; standard library only).

Built in the run's private mount namespace on a small tmpfs that covers the host working directory,
then entered with ``chroot`` by the supervisor (which first mounts the pid namespace's /proc in it).
It holds only:

- the interpreter's directories (its prefix, and the environment's with ``site_packages``), bound
  read-only at their host paths, and the shared libraries (``/usr/lib*``, ``/lib*``; top-level
  symlinks such as ``/lib -> usr/lib`` recreated), also read-only;
- ``/dev/null``, ``zero``, ``full``, ``random``, ``urandom`` (bound from the host), and ``/dev/fd``,
  ``stdin``, ``stdout``, ``stderr`` as links into ``/proc/self/fd``;
- ``/proc`` (an empty mount point, filled with the run's own proc by the supervisor);
- one size-limited tmpfs on ``/tmp`` holding the working directory, with ``/var/tmp`` and
  ``/dev/shm`` bound into it.

Nothing else of the host exists inside: not the repository, not ``/work``, ``/home``, ``/root``,
``/etc``, other runs' files, nor ``/usr/bin`` (no shell to start). The root tmpfs itself is remounted
read-only once built. The program, without capabilities and under the syscall filter, cannot
``chroot`` again or mount anything to climb out.
"""

from __future__ import annotations

import os

from _mounts import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    interpreter_dirs,
    mount,
)

LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")
TOP_LINKS = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")
DEVICES = ("null", "zero", "full", "random", "urandom")


def bind_readonly(source: str, target: str, devices: bool = False) -> None:
    """Bind ``source`` on ``target`` (created as a directory or an empty file) read-only, nosuid."""
    if os.path.isdir(source):
        os.makedirs(target, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        with open(target, "a"):
            pass
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | (0 if devices else MS_NODEV))


def _system_dirs(root: str) -> None:
    """Shared libraries and the top-level links to them."""
    for name in TOP_LINKS:
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), root + host)
    for path in LIBRARY_DIRS:
        if os.path.isdir(path) and not os.path.islink(path):
            bind_readonly(path, root + path)


def _devices(root: str) -> None:
    os.mkdir(root + "/dev", 0o755)
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            bind_readonly("/dev/" + name, f"{root}/dev/{name}", devices=True)
    os.symlink("/proc/self/fd", root + "/dev/fd")
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{fd}", f"{root}/dev/{name}")


def _tmp(cfg: dict, root: str, program: bytes) -> str:
    """The size-limited tmpfs on /tmp, /var/tmp and /dev/shm in it, and the working directory
    with a copy of main.py. Returns the working directory (its path inside the new root)."""
    tmp = root + "/tmp"
    os.mkdir(tmp, 0o1777)
    mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={cfg['max_tmp_mb']}m,mode=1777")
    for target, inside in (("/var/tmp", "/.var-tmp"), ("/dev/shm", "/.dev-shm")):
        os.mkdir(tmp + inside, 0o1777)
        os.chmod(tmp + inside, 0o1777)
        os.makedirs(root + target, 0o755, exist_ok=True)
        mount(tmp + inside, root + target, None, MS_BIND)
    workdir = cfg["workdir"]
    if workdir.startswith("/tmp/"):
        os.makedirs(os.path.dirname(root + workdir), 0o711, exist_ok=True)
        os.mkdir(root + workdir, 0o700)
    else:  # elsewhere: a directory of the tmpfs bound on the same path
        os.mkdir(tmp + "/.work", 0o700)
        os.makedirs(root + workdir, 0o755)
        mount(tmp + "/.work", root + workdir, None, MS_BIND)
    if cfg["uid"] is not None:
        os.chown(root + workdir, cfg["uid"], cfg["gid"])
    with open(root + workdir + "/main.py", "wb") as handle:
        handle.write(program)
    return workdir


def build_root(cfg: dict, fds: dict[str, int]) -> str:
    """Build the new root on a tmpfs over the host working directory (see the module docstring).
    ``fds`` are O_PATH descriptors of the interpreter's directories, opened before anything was
    covered. Returns the new root's host path; the working directory inside it is ``cfg["workdir"]``."""
    root = cfg["workdir"]
    with open(os.path.join(root, "main.py"), "rb") as handle:
        program = handle.read()
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    _system_dirs(root)
    _devices(root)
    os.mkdir(root + "/proc", 0o555)
    _tmp(cfg, root, program)  # before the interpreter: a venv under /tmp is bound into the new /tmp
    for path in interpreter_dirs(bool(cfg["site_packages"])):
        bind_readonly(f"/proc/self/fd/{fds[path]}", root + path)
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return root
