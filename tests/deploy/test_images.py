"""The container images' definitions, checked without Docker: each Dockerfile parses, every image it
starts FROM is pinned (a digest, or a tag with a full version), every install is pinned (pip / uv only
from the lock files, or name==version; no package manager of the OS, no downloads), and the lock files
pin every package, cover every dependency of pyproject.toml within its range, and match the images'
Python and torch builds."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGES = {"gpu": DEPLOY / "Dockerfile.gpu", "cpu": DEPLOY / "Dockerfile.cpu"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
FULL_VERSION_TAG = re.compile(r":[^:/@]*\d+\.\d+\.\d+[^:/@]*$")  # 13.0.2-runtime-ubuntu24.04, 3.11.7-slim-..
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([0-9][^\s;]*)$")
OS_INSTALLERS = ("apt-get install", "apt install", "apk add", "yum install", "dnf install", "conda install",
                 "mamba install", "curl ", "wget ", "git clone")


def instructions(path: Path) -> list[tuple[str, str]]:
    with open(path, "rb") as f:
        parsed = DockerfileParser(fileobj=f)
        return [(s["instruction"], s["value"]) for s in parsed.structure if s["instruction"] != "COMMENT"]


def lock(kind: str) -> tuple[dict[str, str], list[str]]:
    """Pins (canonical name -> version) and option lines of deploy/requirements-KIND.txt."""
    pins, options = {}, []
    for line in (DEPLOY / f"requirements-{kind}.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        match = PIN.match(line)
        assert match, f"requirements-{kind}.txt: {line!r} is not pinned as name==version"
        pins[canonicalize_name(match[1])] = match[3]
    return pins, options


@pytest.mark.parametrize("kind", IMAGES)
def test_dockerfile_parses_and_every_base_image_is_pinned(kind: str) -> None:
    steps = instructions(IMAGES[kind])
    froms = [value.split()[0] for op, value in steps if op == "FROM"]
    assert froms, f"{IMAGES[kind].name} has no FROM"
    for image in froms:
        assert DIGEST.search(image) or (FULL_VERSION_TAG.search(image) and not image.endswith(":latest")), (
            f"{IMAGES[kind].name}: FROM {image} is not pinned (use @sha256:<digest> or a full-version tag)")
    assert {op for op, _ in steps} <= {"FROM", "COPY", "ENV", "RUN", "WORKDIR", "ARG", "LABEL", "USER"}
    assert not any(op == "ADD" for op, _ in steps)  # ADD can fetch URLs


def _pip_installs(command: str) -> list[list[str]]:
    """The argument lists of every `pip install` / `uv pip install` in one RUN command."""
    found = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part)
        for i in range(len(words) - 1):
            if words[i] == "pip" and words[i + 1] == "install":
                found.append(words[i + 2:])
    return found


@pytest.mark.parametrize("kind", IMAGES)
def test_every_install_is_pinned(kind: str) -> None:
    steps = instructions(IMAGES[kind])
    copied = {value.split()[-1]: value.split()[0] for op, value in steps if op == "COPY" and "--from" not in value}
    runs = [value for op, value in steps if op == "RUN"]
    installs = [args for run in runs for args in _pip_installs(run)]
    assert len(installs) == 2, installs  # the lock, then the project
    for run in runs:
        assert not any(word in run for word in OS_INSTALLERS), f"{IMAGES[kind].name}: unpinned install in {run!r}"
    for args in installs:
        value_options = {"--python", "-r", "-c", "--target", "--prefix"}
        positional = [a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] not in value_options]
        if "-r" in args:
            source = copied.get(args[args.index("-r") + 1])
            assert source == f"deploy/requirements-{kind}.txt", f"{IMAGES[kind].name}: -r of {source}"
            assert positional == []
        else:  # the project itself: no dependencies (they come from the lock), no isolated build env
            assert {"--no-deps", "--no-build-isolation", "-e"} <= set(args) and positional == ["/opt/stabledrl"]
        assert all(PIN.match(p) for p in positional if p != "/opt/stabledrl")
    # uv is installed by version, Python by exact version
    for run in runs:
        for match in re.finditer(r"uv python install (\S+)", run):
            assert re.fullmatch(r"\d+\.\d+\.\d+", match[1])


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_lock_pins_every_dependency_within_its_range(kind: str) -> None:
    pins, options = lock(kind)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements-{kind}.txt lacks {req.name} (run `python deploy/lock.py`)"
        version = Version(pins[name])
        assert req.specifier.contains(Version(version.public), prereleases=True), (
            f"requirements-{kind}.txt: {name}=={pins[name]} is outside pyproject's {spec!r}")
    torch = pins["torch"]
    if kind == "cpu":
        assert torch.endswith("+cpu") and options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    else:  # PyPI's Linux torch is the CUDA build; its CUDA wheels come pinned by torch's own metadata
        assert "+" not in torch and options == []
        assert "cuda-bindings" in pins
    # ray's dashboard and job server need ray[default]'s extras: the lock reached them
    assert {"aiohttp", "grpcio", "prometheus-client"} <= set(pins)


def test_both_locks_agree_except_torch_and_its_cuda_pins() -> None:
    cpu, _ = lock("cpu")
    gpu, _ = lock("gpu")
    assert {k: v for k, v in cpu.items() if k != "torch"} == {
        k: v for k, v in gpu.items() if k not in ("torch", "cuda-bindings")}
    assert cpu["torch"].removesuffix("+cpu") == gpu["torch"]
    # the CPU lock's torch is the build the Makefile pins for CPU machines
    assert f"torch=={cpu['torch'].removesuffix('+cpu')}" in (DEPLOY / "constraints-cpu.txt").read_text()


@pytest.mark.parametrize("kind", IMAGES)
def test_image_python_is_the_locks_python(kind: str) -> None:
    header = (DEPLOY / f"requirements-{kind}.txt").read_text().splitlines()[0]
    locked = re.search(r"Python (\d+\.\d+\.\d+)", header)
    assert locked, header
    text = IMAGES[kind].read_text()
    assert (f"uv python install {locked[1]}" in text) if kind == "gpu" else (f"FROM python:{locked[1]}-" in text)


@pytest.mark.parametrize("kind", IMAGES)
def test_build_context_leaves_out_environments_and_weights(kind: str) -> None:
    ignored = {line.strip() for line in (DEPLOY / f"Dockerfile.{kind}.dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "runs", "wandb", "**/*.safetensors"} <= ignored
