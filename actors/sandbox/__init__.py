"""Code sandbox: where model-written programs run, never in the calling process.

- ``base.py``: ``SandboxLimits``, ``SandboxResult`` and the ``Sandbox`` protocol;
- ``process.py``: ``ProcessSandbox``, local child processes with rlimits, a per-run uid and new
  network / pid / mount namespaces, a root of its own and a syscall filter where the OS allows
  (``_bootstrap.py``, ``_mounts.py``, ``_root.py``, ``_seccomp.py`` and ``_reaper.py`` are its child
  side, standard library only); ``PROTECTIONS`` names what a run can report as active;
- ``remote.py``: ``HttpSandbox``, a client of a Sandbox-Fusion-style ``run_code`` service;
- ``procfs.py``: finding and killing a uid's processes.

``make_sandbox(cfg.reward)`` builds the one the config names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.sandbox.base import STATUSES, Sandbox, SandboxLimits, SandboxResult
from actors.sandbox.process import PROTECTIONS, ProcessSandbox
from actors.sandbox.remote import HttpSandbox

if TYPE_CHECKING:
    from system.config import RewardConfig

__all__ = ["PROTECTIONS", "STATUSES", "HttpSandbox", "ProcessSandbox", "Sandbox", "SandboxLimits",
           "SandboxResult", "limits_from_config", "make_sandbox"]


def limits_from_config(cfg: RewardConfig) -> SandboxLimits:
    """The ``sandbox_*`` limits of the reward config section."""
    return SandboxLimits(
        cpu_s=cfg.sandbox_cpu_s, wall_s=cfg.sandbox_wall_s, memory_mb=cfg.sandbox_memory_mb,
        max_processes=cfg.sandbox_max_processes, max_open_files=cfg.sandbox_max_open_files,
        max_file_mb=cfg.sandbox_max_file_mb, max_output_bytes=cfg.sandbox_max_output_bytes,
        max_tmp_mb=cfg.sandbox_max_tmp_mb,
    )


def make_sandbox(cfg: RewardConfig) -> Sandbox:
    """The sandbox ``cfg.sandbox`` names, with the config's limits.

    Raises:
        ConfigError: ``sandbox_require`` names an unknown protection, or the sandbox cannot be built.
    """
    from system.errors import ConfigError

    limits = limits_from_config(cfg)
    if cfg.sandbox == "http":
        if cfg.sandbox_require:
            raise ConfigError(f"reward.sandbox_require {cfg.sandbox_require} cannot be checked on an http "
                              "sandbox (the service's protections are not visible); leave it empty")
        assert cfg.sandbox_url is not None  # RewardConfig's validator
        return HttpSandbox(cfg.sandbox_url, limits)
    unknown = [name for name in cfg.sandbox_require if name not in PROTECTIONS]
    if unknown:
        raise ConfigError(f"reward.sandbox_require names unknown protections {unknown}; "
                          f"known: {sorted(PROTECTIONS)}")
    try:
        return ProcessSandbox(limits, require=cfg.sandbox_require, site_packages=cfg.sandbox_site_packages)
    except ValueError as exc:
        raise ConfigError(f"reward.sandbox: {exc}") from exc
