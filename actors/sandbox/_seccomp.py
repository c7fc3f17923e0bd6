"""The program's syscall filter (seccomp BPF; imported by ``_bootstrap.py`` only, standard library only).

Installed in the program's process after its privileges are dropped (no_new_privs is what lets an
unprivileged process install it), so it binds the program and everything it starts. Denied, with
EPERM unless said otherwise:

- new namespaces: ``unshare`` and ``setns`` always, ``clone`` with any ``CLONE_NEW*`` flag, and
  ``clone3`` (ENOSYS: its flags sit in memory a filter cannot read; glibc then falls back to
  ``clone``, which is checked). So no user namespace, which would hand the program capabilities
  over a namespace of its own and widen what a kernel bug could reach;
- the mount table: ``mount``, ``umount2``, ``pivot_root``, ``chroot``, and the new mount API
  (``open_tree``, ``move_mount``, ``fsopen``, ``fsconfig``, ``fsmount``, ``fspick``,
  ``mount_setattr``);
- kernel attack surface a test never needs: ``bpf``, ``perf_event_open``, ``userfaultfd``,
  ``io_uring_*``, ``keyctl`` / ``add_key`` / ``request_key``, ``ptrace``, module and kexec loading,
  ``swapon`` / ``swapoff``, ``reboot``, ``acct``, ``quotactl``.

A syscall of another ABI than the interpreter's (x32 or i386 on x86_64) kills the process. Only
x86_64 and aarch64 have tables here; elsewhere the filter is not installed and a note says so.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
LD_W_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
NEW_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
X32_BIT = 0x40000000
_DENIED_NAMES = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
                 "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "bpf", "perf_event_open",
                 "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key",
                 "request_key", "ptrace", "init_module", "finit_module", "delete_module", "kexec_load",
                 "kexec_file_load", "swapon", "swapoff", "reboot", "acct", "quotactl")
_NEW_MOUNT_API = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
                  "fspick": 433, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
                  "clone3": 435, "mount_setattr": 442}
# (audit arch, syscall numbers) per machine; the numbers from 425 on are the same on both.
TABLES = {
    "x86_64": (0xC000003E, {
        "clone": 56, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
        "request_key": 249, "ptrace": 101, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "kexec_load": 246, "kexec_file_load": 320, "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163,
        "quotactl": 179, **_NEW_MOUNT_API}),
    "aarch64": (0xC00000B7, {
        "clone": 220, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219, "add_key": 217,
        "request_key": 218, "ptrace": 117, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "kexec_load": 104, "kexec_file_load": 294, "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89,
        "quotactl": 60, **_NEW_MOUNT_API}),
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def filter_program(machine: str) -> bytes:
    """The BPF program for ``machine`` (``os.uname().machine``); KeyError when there is no table."""
    arch, numbers = TABLES[machine]
    deny = RET_ERRNO | errno.EPERM
    prog = [_insn(LD_W_ABS, 0, 0, 4), _insn(JEQ, 1, 0, arch), _insn(RET, 0, 0, RET_KILL_PROCESS),
            _insn(LD_W_ABS, 0, 0, 0)]
    if machine == "x86_64":  # x32 syscalls carry this bit
        prog += [_insn(JGE, 0, 1, X32_BIT), _insn(RET, 0, 0, RET_KILL_PROCESS)]
    for name in _DENIED_NAMES:
        prog += [_insn(JEQ, 0, 1, numbers[name]), _insn(RET, 0, 0, deny)]
    prog += [_insn(JEQ, 0, 1, numbers["clone3"]), _insn(RET, 0, 0, RET_ERRNO | errno.ENOSYS)]
    prog += [_insn(JEQ, 0, 3, numbers["clone"]), _insn(LD_W_ABS, 0, 0, 16),  # low half of args[0]: flags
             _insn(JSET, 0, 1, NEW_NAMESPACE_FLAGS), _insn(RET, 0, 0, deny), _insn(RET, 0, 0, RET_ALLOW)]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(libc: ctypes.CDLL) -> None:
    """Install the filter in this process (no_new_privs must be set). Raises OSError otherwise."""
    machine = os.uname().machine
    if machine not in TABLES:
        raise OSError(errno.ENOSYS, f"no syscall table for {machine}")
    program = filter_program(machine)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {os.strerror(err)}")
