"""The sandbox's private mount namespace (imported by ``_bootstrap.py`` only; standard library only).

In a fresh mount namespace, with propagation made private first so nothing reaches the host:

- ``readonly_root``: every inherited mount becomes read-only (``mount_setattr``, recursive);
- ``private_root``: a new root holding only what the program needs (``_root.py``), entered by the
  supervisor with ``chroot``; its ``/tmp`` is the private tmpfs below. Only when that fails:
- ``private_tmp``: one size-limited tmpfs (``max_tmp_mb``) is mounted on /tmp, and /var/tmp and
  /dev/shm are bound to directories inside it; the working directory is recreated on it. Whatever
  the program writes there vanishes with the namespace, and shared /tmp content (other runs, Ray's
  sockets, the caller's files) is out of sight;
- when the program runs as a separate uid and the interpreter lives under a directory that uid may
  not enter (``/root`` here), that directory is covered by an empty tmpfs into which only the
  interpreter's own directories are bound read-only: the rest of it stays hidden.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def arg(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    if _LIBC.mount(arg(source), arg(target), arg(fstype), ctypes.c_ulong(flags), arg(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def readonly_root() -> None:
    """Make every mount of this namespace read-only (Linux >= 5.12)."""
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)  # struct mount_attr: set, clr, propagation, userns
    syscall = _LIBC.syscall
    syscall.restype = ctypes.c_long
    if syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), b"/", ctypes.c_uint(AT_RECURSIVE),
               attr, ctypes.c_size_t(32)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount_setattr: {os.strerror(err)}")


def interpreter_dirs(site_packages: bool) -> list[str]:
    """Directories the program's interpreter needs, outermost first, none inside another."""
    wanted = {sys.base_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable)}
    if site_packages:
        wanted |= {sys.prefix, sys.exec_prefix}
    dirs = sorted(os.path.realpath(path) for path in wanted if path)
    kept: list[str] = []
    for path in dirs:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def blocking_dir(path: str, uid: int, gid: int) -> str | None:
    """The first directory on the way to ``path`` (itself included) that ``uid`` may not enter;
    None when all can be entered or the rest does not exist yet."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except FileNotFoundError:
            return None
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return current
    return None


def expose_interpreter(cfg: dict, fds: dict[str, int], notes: dict) -> None:
    """Cover each directory that blocks the separate uid with an empty tmpfs and bind the
    interpreter's directories back into it, read-only."""
    covered: set[str] = set()
    for path, fd in fds.items():
        blocker = blocking_dir(path, cfg["uid"], cfg["gid"])
        if blocker is None:
            continue
        if blocker == path:
            notes["interpreter"] = f"{path} itself may not be entered by uid {cfg['uid']}"
            continue
        if blocker not in covered:
            mount("tmpfs", blocker, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
            covered.add(blocker)
        os.makedirs(path, 0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def private_tmp(cfg: dict, source_path: str) -> str:
    """Mount the run's tmpfs on /tmp (with /var/tmp and /dev/shm inside it) and recreate the working
    directory there, holding a copy of main.py. Returns the new working directory."""
    with open(source_path, "rb") as handle:
        program = handle.read()
    size = cfg["max_tmp_mb"]
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={size}m,mode=1777")
    for target, inside in (("/var/tmp", "/tmp/.var-tmp"), ("/dev/shm", "/tmp/.dev-shm")):
        if os.path.isdir(target) and not os.path.islink(target):
            os.mkdir(inside, 0o1777)
            os.chmod(inside, 0o1777)
            mount(inside, target, None, MS_BIND)
    workdir = cfg["workdir"]
    if workdir.startswith("/tmp/"):
        os.makedirs(os.path.dirname(workdir), 0o711, exist_ok=True)
        os.mkdir(workdir, 0o700)
    else:  # a working directory elsewhere: cover it with a directory of the tmpfs
        os.mkdir("/tmp/.work", 0o700)
        mount("/tmp/.work", workdir, None, MS_BIND)
    if cfg["uid"] is not None:
        os.chown(workdir, cfg["uid"], cfg["gid"])
    with open(os.path.join(workdir, "main.py"), "wb") as handle:
        handle.write(program)
    return workdir


def private_mounts(cfg: dict, prot: dict, notes: dict) -> str:
    """Set up the namespace's mounts (see the module docstring). Returns the working directory.
    Every step that fails is named in ``notes``; nothing is mounted unless propagation is private."""
    host_workdir = cfg["workdir"]
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as exc:
        notes["mount_namespace"] = f"could not make mounts private, none made: {exc}"
        prot["mount_namespace"] = False
        return host_workdir
    fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in interpreter_dirs(bool(cfg["site_packages"]))}
    source_path = os.path.join(host_workdir, "main.py")
    try:
        readonly_root()
        prot["readonly_root"] = True
    except OSError as exc:
        notes["readonly_root"] = str(exc)
    workdir = host_workdir
    try:
        import _root

        cfg["new_root"] = _root.build_root(cfg, fds)
        prot["private_root"] = prot["private_tmp"] = True
        workdir = cfg["new_root"] + cfg["workdir"]
    except OSError as exc:
        notes["private_root"] = str(exc)
        cfg.pop("new_root", None)
        _LIBC.umount2(host_workdir.encode(), ctypes.c_int(MNT_DETACH))
    if not prot.get("private_root"):  # the former layout: the host's tree, a private /tmp
        try:
            workdir = private_tmp(cfg, source_path)
            prot["private_tmp"] = True
        except OSError as exc:
            notes["private_tmp"] = str(exc)
        if cfg["uid"] is not None:
            try:
                expose_interpreter(cfg, fds, notes)
            except OSError as exc:
                notes["interpreter"] = str(exc)
    for fd in fds.values():
        os.close(fd)
    return workdir
