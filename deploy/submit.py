"""Submit a stabledrl job to a Ray cluster, follow its logs until it ends, and exit with its status.

    python deploy/submit.py [--address http://127.0.0.1:8265] [--runtime-env deploy/runtime_env.yaml] \\
        -- stabledrl train --config configs/smoke.yaml

The same as ``ray job submit --address ... --runtime-env ... -- ENTRYPOINT`` (which also waits and
streams), plus: the dashboard address is checked first (an unreachable one fails within seconds),
token authentication is switched on when a token is available (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; ``ray job submit`` needs ``RAY_AUTH_MODE=token`` set by
hand), Ctrl-C or ``--timeout-s`` stop the job instead of leaving it running, and the exit code is the
job's: 0 SUCCEEDED, 1 FAILED, 3 STOPPED, 4 stopped by --timeout-s, 2 could not submit.

Run it from the repository root: a relative ``working_dir`` in the runtime env is resolved against the
current directory, as ``ray job submit`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
EXIT_TIMEOUT, EXIT_SUBMIT = 4, 2


class SubmitError(Exception):
    """Nothing was submitted: a bad argument, an unreachable head, no token (exit code 2)."""


def _say(message: str) -> None:
    print(f"[submit] {message}", file=sys.stderr, flush=True)


def token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def set_auth(mode: str) -> None:
    """RAY_AUTH_MODE before Ray is imported (the job client adds the token header only in token mode)."""
    if mode == "auto":
        if "RAY_AUTH_MODE" in os.environ:
            return
        mode = "token" if token_available() else "disabled"
    if mode == "token" and not token_available():
        raise SubmitError("token authentication needs a token: set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or copy the "
                         "head's ~/.ray/auth_token here (`ray get-auth-token` prints it on the head)")
    os.environ["RAY_AUTH_MODE"] = mode


def check_reachable(address: str, timeout_s: float) -> None:
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SubmitError(f"--address {address!r} must be the dashboard URL, e.g. http://127.0.0.1:8265")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return
    except OSError as err:
        raise SubmitError(f"--address {address}: nothing answers there ({err.strerror or type(err).__name__}); "
                         "is the head running with its dashboard (`ray start --head`, deploy/README.md)?") from None


def load_runtime_env(path: str | None, working_dir: str | None) -> dict[str, Any]:
    import yaml

    env: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise SubmitError(f"--runtime-env {path}: file not found (run from the repository root)")
        env = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(env, dict):
            raise SubmitError(f"--runtime-env {path}: must be a mapping of runtime-env fields")
    if working_dir is not None:
        env["working_dir"] = working_dir
    if isinstance(env.get("working_dir"), str) and "://" not in env["working_dir"]:
        local = Path(env["working_dir"]).resolve()
        if not local.is_dir():
            raise SubmitError(f"runtime env working_dir {env['working_dir']!r} is not a directory here ({local})")
        env["working_dir"] = str(local)
    return env


async def _follow(client: Any, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def follow(client: Any, job_id: str, timeout_s: float | None) -> str:
    """Stream the job's logs until it ends (or ``timeout_s``); returns its final status name."""
    from ray.job_submission import JobStatus

    try:
        asyncio.run(asyncio.wait_for(_follow(client, job_id), timeout=timeout_s))
    except asyncio.TimeoutError:
        _say(f"job {job_id} still running after --timeout-s {timeout_s:g}: stopping it")
        client.stop_job(job_id)
        wait_terminal(client, job_id, 60.0)
        return "TIMEOUT"
    except RuntimeError as err:  # the log stream closed early: the status below still tells the outcome
        _say(f"log stream ended: {err}")
    status = wait_terminal(client, job_id, 60.0)
    return status.name if isinstance(status, JobStatus) else str(status)


def wait_terminal(client: Any, job_id: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                   help="dashboard URL of the head (default: $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--runtime-env", default="deploy/runtime_env.yaml", help="runtime env YAML ('' for none)")
    p.add_argument("--working-dir", default=None, help="override the runtime env's working_dir")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray picks one)")
    p.add_argument("--auth", choices=("auto", "token", "disabled"), default="auto",
                   help="auto: token authentication when a token is available (default)")
    p.add_argument("--timeout-s", type=float, default=None, help="stop the job after this many seconds")
    p.add_argument("--connect-timeout-s", type=float, default=10.0, help="how long to try reaching --address")
    p.add_argument("--no-wait", action="store_true", help="submit, print the job id and exit")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the command the job runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    try:
        if not entrypoint:
            raise SubmitError("no entrypoint: add `-- COMMAND ...`, e.g. -- stabledrl train --config configs/smoke.yaml")
        set_auth(args.auth)
        check_reachable(args.address, args.connect_timeout_s)
        runtime_env = load_runtime_env(args.runtime_env or None, args.working_dir)
    except SubmitError as err:
        _say(str(err))
        return EXIT_SUBMIT
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(args.address)
        job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env,
                                   submission_id=args.submission_id)
    except Exception as err:  # the client raises plain RuntimeError / ConnectionError with the server's reason
        _say(f"could not submit to {args.address}: {type(err).__name__}: {err}")
        return EXIT_SUBMIT
    _say(f"submitted {job_id} to {args.address}: {shlex.join(entrypoint)}")
    if args.no_wait:
        print(job_id)
        return 0
    try:
        status = follow(client, job_id, args.timeout_s)
    except KeyboardInterrupt:
        _say(f"interrupted: stopping {job_id}")
        client.stop_job(job_id)
        status = wait_terminal(client, job_id, 60.0).name
    message = (client.get_job_info(job_id).message or "").split("\n", 1)[0]  # its first line: the logs were shown
    _say(f"job {job_id}: {status}" + (f" ({message.rstrip(':, ')})" if message else ""))
    return EXIT_TIMEOUT if status == "TIMEOUT" else EXIT.get(status, 1)


if __name__ == "__main__":
    sys.exit(main())
