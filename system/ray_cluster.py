"""Starting or joining the Ray cluster of a run (``cluster.mode: ray``).

``connect(cfg.cluster)`` decides, in this order:

1. inside a Ray job (``ray job submit`` sets ``RAY_ADDRESS`` for the entrypoint) or with
   ``cluster.address`` set: join that cluster. The address is checked with a plain TCP connection
   first, so an unreachable one fails within ``cluster.connect_timeout_s`` with a clear message
   instead of Ray's long reconnect loop;
2. otherwise: start a private local cluster on 127.0.0.1 (no dashboard; ``cluster.num_cpus``,
   ``num_gpus``, ``object_store_mb``). Ray replaces a loopback node IP by the machine's routable one
   unless multi-node clusters are off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), so ``connect`` turns
   them off for a local cluster, and when joining an address on 127.0.0.1 (which Ray would otherwise
   rewrite, and then retry forever): every Ray process then talks over 127.0.0.1 only.

Authentication: Ray 2.60 has token authentication (``RAY_AUTH_MODE=token``; the token comes from
``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``). A new local cluster turns it on
and creates the token file if needed; joining an explicit address turns it on only when asked, so
``connect`` sets ``RAY_AUTH_MODE`` from ``cluster.auth_mode`` (default ``token``) before ``ray.init``.

Code: workers must import the project. On this machine (a local cluster, or joining one from the
same checkout) the workers get the project root on ``PYTHONPATH``; joining a remote cluster from
outside a job ships the ``system``, ``actors`` and ``learner`` packages as ``py_modules``; inside a
job, the job's runtime env (``deploy/runtime_env.yaml``: ``working_dir``) already has them, and a
second runtime env would conflict with it.

``LocalHead`` runs the documented head (``ray start --head --block`` on 127.0.0.1, token auth) as a
child process and stops exactly it, for ``ray job submit`` on one machine and its tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from system.config import ClusterConfig
from system.errors import ConfigError

__all__ = ["ClusterConnectError", "LocalHead", "PROJECT_ROOT", "connect", "is_connected", "shutdown",
           "worker_runtime_env"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("system", "actors", "learner")
LOCAL_HOSTS = ("127.0.0.1", "localhost")
_restore: dict[str, Any] = {}  # what _loopback_only changed, put back by shutdown()


class ClusterConnectError(ConfigError):
    """The Ray cluster named by the config (or by RAY_ADDRESS) cannot be reached or joined."""


def _inside_job() -> bool:
    """True in the entrypoint of ``ray job submit`` (and in the processes it starts)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")) or bool(os.environ.get("RAY_JOB_ID"))


def _split(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` or ``ray://host:port``; None for ``auto``."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float, source: str) -> None:
    """A TCP connection to ``address`` within ``timeout_s``, or a ClusterConnectError saying what to do."""
    target = _split(address)
    if target is None:
        return
    start = time.monotonic()
    try:
        with socket.create_connection(target, timeout=timeout_s):
            return
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        raise ClusterConnectError(
            f"{source} = {address!r}: no Ray head answers there ({reason} after {time.monotonic() - start:.1f} s); "
            "start one with `ray start --head --node-ip-address 127.0.0.1 --port 6379` (deploy/README.md), "
            "fix the address, or leave cluster.address unset to start a local cluster"
        ) from None


def worker_runtime_env(joining: str | None, extra_pythonpath: Sequence[str | Path] = ()) -> dict[str, Any] | None:
    """The runtime env that lets workers import the project (see the module docstring)."""
    if joining is not None and _inside_job():
        return None
    target = _split(joining) if joining is not None else None
    same_machine = joining is None or (target is not None and target[0] in LOCAL_HOSTS)
    paths = [str(PROJECT_ROOT), *(str(Path(p).resolve()) for p in extra_pythonpath)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env: dict[str, Any] = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "TOKENIZERS_PARALLELISM": "false"}}
    if not same_machine:
        env["py_modules"] = [str(PROJECT_ROOT / name) for name in PACKAGES]
        del env["env_vars"]["PYTHONPATH"]
    return env


def _set_auth_mode(mode: str) -> None:
    """RAY_AUTH_MODE for this process and the Ray processes it starts (Ray caches it: refresh)."""
    if os.environ.get("RAY_AUTH_MODE") == mode:
        return
    os.environ["RAY_AUTH_MODE"] = mode
    from ray._raylet import Config  # the same refresh Ray does when it turns token auth on itself

    Config.initialize("")


def _loopback_only() -> None:
    """Make Ray use 127.0.0.1 as this node's IP. Ray turns ``--node-ip-address 127.0.0.1`` into the
    machine's routable IP unless multi-node clusters are disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    read when Ray is imported; the constant is also set in case Ray was imported already)."""
    from ray._private import ray_constants

    _restore.setdefault("env", os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))
    _restore.setdefault("constant", ray_constants.ENABLE_RAY_CLUSTER)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def is_connected() -> bool:
    import ray

    return ray.is_initialized()


def connect(cfg: ClusterConfig, *, extra_pythonpath: Sequence[str | Path] = (), log_to_driver: bool = True) -> None:
    """Join ``cfg.address`` (or the job's cluster), or start a local cluster on 127.0.0.1; a no-op when this
    process is connected already (to whichever cluster).

    ``extra_pythonpath``: more directories the workers must import from (local machine only; tests).
    """
    import ray

    if ray.is_initialized():
        return
    source, joining = "cluster.address", cfg.address
    if joining is None and os.environ.get("RAY_ADDRESS"):
        source, joining = "RAY_ADDRESS", os.environ["RAY_ADDRESS"]
    if joining is not None:
        check_reachable(joining, cfg.connect_timeout_s, source)
    target = _split(joining) if joining is not None else None
    if joining is None or (target is not None and target[0] in LOCAL_HOSTS):
        _loopback_only()  # else Ray rewrites 127.0.0.1 (ours, or the address to join) to the routable IP
    _set_auth_mode(cfg.auth_mode)
    runtime_env = worker_runtime_env(joining, extra_pythonpath)
    common: dict[str, Any] = {"namespace": cfg.namespace, "runtime_env": runtime_env, "log_to_driver": log_to_driver}
    if joining is None:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=cfg.num_cpus,
                 num_gpus=cfg.num_gpus,
                 object_store_memory=None if cfg.object_store_mb is None else cfg.object_store_mb * 2**20, **common)
        return
    try:
        ray.init(address=joining, **common)
    except Exception as err:  # Ray reports a refused token as a plain ConnectionError
        raise ClusterConnectError(
            f"{source} = {joining!r}: could not join the Ray cluster ({type(err).__name__}: {err}). A head with "
            f"token authentication (Ray's default) needs this process to have its token (RAY_AUTH_TOKEN, "
            f"RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as printed by `ray get-auth-token` on the head) and "
            f"cluster.auth_mode: token (now {cfg.auth_mode!r})") from err


def shutdown() -> None:
    """Disconnect from (or stop, for a local one) the cluster; a no-op when not connected."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if _restore:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = _restore.pop("constant")
        env = _restore.pop("env")
        if env is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = env


# ------------------------------------------------------------------------------------------- a local head


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")  # the ray of this interpreter's environment
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if found is None:
        raise FileNotFoundError("the `ray` command is not installed beside this Python (pip install 'ray[default]')")
    return found


@dataclass
class LocalHead:
    """A Ray head on 127.0.0.1 with token authentication, run as ``ray start --head --block``: the
    documented head of deploy/README.md, as a child process (tests, ``ray job submit`` on one machine).

    ``stop()`` sends SIGTERM to that one process, which drains and stops exactly the Ray processes it
    started; ``ray stop`` would kill every Ray process of the machine, other people's included. Ports
    are picked free and the temp dir is private, so several heads can run side by side.
    """

    process: subprocess.Popen
    port: int
    dashboard_port: int
    temp_dir: Path
    log_path: Path

    @property
    def address(self) -> str:
        """The GCS address (``cluster.address``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """The job-submission address (``ray job submit --address``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @classmethod
    def start(cls, num_cpus: int = 2, timeout_s: float = 180.0, temp_dir: str | Path | None = None) -> LocalHead:
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        ray = _ray_cli()
        # Creates ~/.ray/auth_token when no token exists yet (an existing RAY_AUTH_TOKEN / file is kept).
        subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
        root = Path(temp_dir) if temp_dir is not None else Path(tempfile.mkdtemp(prefix="ray-head-", dir="/tmp"))
        port, dashboard_port = _free_port(), _free_port()
        command = [ray, "start", "--head", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                   "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
                   "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
                   "--num-cpus", str(num_cpus), "--temp-dir", str(root)]
        log_path = root / "head.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        head = cls(process, port, dashboard_port, root, log_path)
        head._wait_ready(timeout_s)
        return head

    def _wait_ready(self, timeout_s: float) -> None:
        """Until the dashboard (which serves job submission) accepts connections."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited with {self.process.returncode}; its log "
                                   f"{self.log_path}:\n{self.log_path.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.dashboard_port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the Ray head did not serve its dashboard within {timeout_s:g} s; log {self.log_path}")

    def stop(self, timeout_s: float = 90.0) -> int | None:
        """SIGTERM to the head process (by its pid); waits for it to drain and exit. Returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode

    def __enter__(self) -> LocalHead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
