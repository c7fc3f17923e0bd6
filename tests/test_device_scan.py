"""The static half of the device guard (issue 17): every tensor factory in the code that works on the
model's tensors names its device, every ``torch.Generator`` names its device, and every random draw is
made on its generator's device (``device=generator.device``) unless a comment on the line or the one
above says why the generator is on the output's device (``# generator on ...``).

`tests/test_device_guard.py` runs the code paths with a stray default device; this scan also covers the
lines no test reaches, and the one thing the runtime guard cannot see on a CPU-only machine: a CPU
generator driving a draw on the model's device (both are the CPU there; CUDA refuses it).

Module construction is exempt: parameters and buffers made inside ``nn.Parameter(...)`` or
``register_buffer(...)`` follow the default device on purpose (``build_on_meta`` builds on ``meta``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

SCOPE = ["actors/decoding", "actors/rollout_worker.py", "actors/evaluate.py", "learner", "system/diffusion.py",
         "system/staircase.py", "system/models", "system/transports", "system/monitoring/probe.py", "bench/gpu.py"]
FACTORIES = {"arange", "zeros", "ones", "full", "empty", "rand", "randn", "randint", "randperm", "tensor",
             "as_tensor", "linspace", "logspace", "eye", "tril_indices", "triu_indices", "Generator",
             "empty_strided", "scalar_tensor"}
DRAWS = {"rand", "randn", "randint", "randperm", "multinomial", "bernoulli", "normal", "poisson"}
EXEMPT_PARENTS = {"Parameter", "register_buffer"}
PRAGMA = "# generator on"


def scoped_files() -> list[Path]:
    files: list[Path] = []
    for entry in SCOPE:
        path = REPO / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
    return files


def _torch_call(node: ast.AST) -> str | None:
    """``name`` for a call ``torch.name(...)``, else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        owner = node.func.value
        if isinstance(owner, ast.Name) and owner.id == "torch":
            return node.func.attr
    return None


def _exempt_calls(tree: ast.AST) -> set[int]:
    """ids of the factory calls inside ``nn.Parameter(...)`` / ``register_buffer(...)`` arguments."""
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in EXEMPT_PARENTS:
                exempt |= {id(n) for arg in node.args for n in ast.walk(arg)}
    return exempt


def _draw_problem(node: ast.Call, lines: list[str]) -> str | None:
    kwargs = {k.arg: k.value for k in node.keywords if k.arg}
    if "generator" not in kwargs:
        return None
    here = "\n".join(lines[max(0, node.lineno - 2):node.lineno])
    if PRAGMA in here:
        return None
    device = kwargs.get("device")
    if device is not None and ast.unparse(device) == ast.unparse(kwargs["generator"]) + ".device":
        return None
    return "draws on another device than its generator's (device=generator.device, or say why: '# generator on')"


def problems(path: Path, label: str | None = None) -> list[str]:
    """The violations in one file, as ``label:line: torch.name ...`` strings (label: the path)."""
    source = path.read_text()
    tree, lines = ast.parse(source), source.splitlines()
    exempt, found = _exempt_calls(tree), []
    for node in ast.walk(tree):
        name = _torch_call(node)
        if name is None or id(node) in exempt:
            continue
        assert isinstance(node, ast.Call)
        where = f"{label or path}:{node.lineno}: torch.{name}"
        if name in FACTORIES and not any(k.arg == "device" for k in node.keywords):
            found.append(f"{where} has no device= (it would land on the CPU next to CUDA tensors)")
        if name in DRAWS and (issue := _draw_problem(node, lines)):
            found.append(f"{where} {issue}")
    return found


def test_the_scan_covers_the_audited_code() -> None:
    names = {str(p.relative_to(REPO)) for p in scoped_files()}
    assert {"actors/decoding/reference.py", "learner/learner.py", "learner/sft.py", "system/diffusion.py",
            "learner/estimators/elbo.py", "learner/losses/stabledrl.py", "system/models/llada2.py"} <= names


@pytest.mark.parametrize("path", scoped_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_tensor_and_generator_names_its_device(path: Path) -> None:
    assert problems(path, str(path.relative_to(REPO))) == []


def test_the_scan_finds_the_defects_of_issue_17(tmp_path: Path) -> None:
    """The decoder's CPU ``arange`` and SFT's CPU generator driving a draw on the tokens' device."""
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n"
                   "ranks = torch.empty_like(o).scatter_(-1, o, torch.arange(o.shape[-1]).expand_as(o))\n"
                   "u = torch.rand(tokens.shape, generator=generator, device=tokens.device)\n"
                   "gen = torch.Generator()\n")
    found = problems(bad, "bad.py")
    assert sorted(f.split(":")[1] for f in found) == ["2", "3", "4"]

