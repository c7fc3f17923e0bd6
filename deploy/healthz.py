"""Readiness / liveness probe of a Ray pod (deploy/kuberay/*.yaml): ``python deploy/healthz.py URL ...``.

Exits 0 when every URL answers 200 within the timeout with "success" in the body (Ray's health
endpoints: ``/api/local_raylet_healthz`` on the dashboard agent, ``/api/gcs_healthz`` on the head's
dashboard), 1 otherwise. With token authentication on, the request carries the token
(``RAY_AUTH_TOKEN``) as a bearer header. Written for the images, which have Python but no wget or curl
(KubeRay's default probes run wget).
"""

from __future__ import annotations

import os
import sys
import urllib.request

TIMEOUT_S = 2.0


def healthy(url: str) -> bool:
    request = urllib.request.Request(url)
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            return reply.status == 200 and b"success" in reply.read(4096)
    except OSError:
        return False


def main(urls: list[str]) -> int:
    if not urls:
        print("usage: python deploy/healthz.py URL [URL ...]", file=sys.stderr)
        return 2
    return 0 if all(healthy(url) for url in urls) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
