"""``HttpSandbox``: the ``Sandbox`` interface over a Sandbox-Fusion-style HTTP service, for clusters
where code runs on dedicated sandbox nodes.

Contract (``POST <url>/run_code``, JSON): request ``{"code", "language": "python", "run_timeout",
"compile_timeout", "memory_limit_MB", "stdin", "files": {}, "fetch_files": []}``; reply ``{"status":
"Success" | "Failed" | "SandboxError", "message", "compile_result", "run_result": {"status":
"Finished" | "Error" | "TimeLimitExceeded", "execution_time", "return_code", "stdout", "stderr"}}``.

Mapping: ``SandboxError`` or no ``run_result`` -> ``sandbox_error``; ``TimeLimitExceeded`` ->
``timeout``; a return code of 0 -> ``ok``; a negative one (a signal) -> ``killed``; any other ->
``error``. The reply is untrusted input: its size is capped, its fields are type-checked, and any
transport or format failure is a ``sandbox_error`` result, never an exception. Which protections
the service applies cannot be seen from here: ``protections`` says only ``remote_service``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from actors.sandbox.base import SandboxLimits, SandboxResult, cut_output

MAX_REPLY_BYTES = 16 << 20


class HttpSandbox:
    """Client of a ``run_code`` service.

    Args:
        url: the service, e.g. ``http://sandbox:8080`` (``/run_code`` is appended unless present).
        limits: default limits; ``wall_s`` becomes ``run_timeout``, ``memory_mb`` ``memory_limit_MB``.
            CPU, process, file and output limits are the service's own (output is cut here too).
        request_timeout_s: seconds to wait for a reply beyond ``wall_s`` (queueing, start-up).
        retries: further attempts after a connection failure or an HTTP 5xx reply.
    """

    def __init__(self, url: str, limits: SandboxLimits | None = None, *, request_timeout_s: float = 30.0,
                 retries: int = 2) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"sandbox url {url!r} must start with http:// or https://")
        self.url = url if url.rstrip("/").endswith("/run_code") else url.rstrip("/") + "/run_code"
        self.limits = limits or SandboxLimits()
        self.request_timeout_s, self.retries = request_timeout_s, retries

    def run(self, program: str, *, stdin: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
        limits = limits or self.limits
        body = json.dumps({
            "code": program, "language": "python", "run_timeout": limits.wall_s, "compile_timeout": limits.wall_s,
            "memory_limit_MB": limits.memory_mb, "stdin": stdin, "files": {}, "fetch_files": [],
        }).encode()
        start = time.monotonic()
        reply, problem = None, ""
        for _ in range(self.retries + 1):
            reply, problem, retry = self._post(body, limits.wall_s + self.request_timeout_s)
            if not retry:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        if reply is None:
            return _error(f"sandbox service {self.url}: {problem}", elapsed)
        return to_result(reply, limits, elapsed)

    def _post(self, body: bytes, timeout: float) -> tuple[dict | None, str, bool]:
        """One request. Returns (parsed reply or None, problem, whether a retry may help)."""
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read(MAX_REPLY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            return None, f"HTTP {exc.code} {exc.reason}", exc.code >= 500
        except (urllib.error.URLError, OSError) as exc:
            return None, f"unreachable ({exc})", True
        if len(raw) > MAX_REPLY_BYTES:
            return None, f"reply larger than {MAX_REPLY_BYTES} bytes", False
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            return None, f"reply is not JSON ({exc}): {raw[:200]!r}", False
        if not isinstance(reply, dict):
            return None, f"reply is not a JSON object: {raw[:200]!r}", False
        return reply, "", False


def _error(reason: str, elapsed: float) -> SandboxResult:
    return SandboxResult("sandbox_error", None, "", "", elapsed, {"remote_service": True}, reason=reason)


def _text(run: dict, key: str, limit: int) -> tuple[str, bool]:
    value = run.get(key)
    if not isinstance(value, str):
        return "", False
    return cut_output(value.encode("utf-8", errors="replace"), limit)


def to_result(reply: dict[str, Any], limits: SandboxLimits, elapsed: float) -> SandboxResult:
    """Map a ``run_code`` reply onto a ``SandboxResult`` (see the module docstring)."""
    run = reply.get("run_result")
    if reply.get("status") == "SandboxError" or not isinstance(run, dict):
        return _error(f"sandbox service error: {str(reply.get('message', ''))[:500] or 'no run_result'}", elapsed)
    stdout, cut_out = _text(run, "stdout", limits.max_output_bytes)
    stderr, cut_err = _text(run, "stderr", limits.max_output_bytes)
    seconds = run.get("execution_time")
    wall = float(seconds) if isinstance(seconds, int | float) and not isinstance(seconds, bool) else elapsed
    code = run.get("return_code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None

    def result(status: str, exit_code: int | None, reason: str) -> SandboxResult:
        return SandboxResult(status, exit_code, stdout, stderr, wall, {"remote_service": True},
                             cut_out or cut_err, reason)

    if run.get("status") == "TimeLimitExceeded":
        return result("timeout", None, f"the service's time limit ({limits.wall_s} s) was reached")
    if code is None:
        return _error(f"sandbox service reply without a return code (run status {run.get('status')!r})", wall)
    if code == 0:
        return result("ok", 0, "")
    if code < 0:
        return result("killed", code, f"killed by signal {-code}")
    return result("error", code, f"exit code {code}")
