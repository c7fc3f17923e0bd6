"""What a reward function gets besides the example and the completion: the profile, the format
weight of the ``default`` profile, and (for code) the sandbox, built lazily in the process that
scores, from the reward config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from system.types import RewardResult

if TYPE_CHECKING:
    from actors.sandbox import Sandbox, SandboxLimits
    from system.config import RewardConfig

PROFILES = ("default", "d1")


@dataclass
class RewardContext:
    """Settings shared by every reward call of one scoring process.

    Attributes:
        profile: ``default`` (correctness first) or ``d1`` (the published scoring, quirks included).
        format_weight: ``default`` profile: score = (1 - w) * correctness + w * format.
        config: the reward config section (sandbox kind and limits); None: its defaults.
        sandbox: the code sandbox; None: built from ``config`` on first use.
    """

    profile: str = "default"
    format_weight: float = 0.1
    config: RewardConfig | None = None
    sandbox: Sandbox | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown reward profile {self.profile!r}; known: {list(PROFILES)}")
        if not 0.0 <= self.format_weight <= 1.0:
            raise ValueError(f"format_weight {self.format_weight} must be in [0, 1]")

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> RewardContext:
        return cls(profile=cfg.profile, format_weight=cfg.format_weight, config=cfg)

    def get_sandbox(self) -> Sandbox:
        if self.sandbox is None:
            from actors.sandbox import make_sandbox
            from system.config import RewardConfig

            self.sandbox = make_sandbox(self.config or RewardConfig())
        return self.sandbox

    def sandbox_limits(self) -> SandboxLimits:
        from actors.sandbox import SandboxLimits, limits_from_config

        if self.config is not None:
            return limits_from_config(self.config)
        return getattr(self.sandbox, "limits", None) or SandboxLimits()

    def blend(self, correctness: float, fmt: float, components: dict[str, float], reason: str,
              correct: bool) -> RewardResult:
        """The ``default`` profile's score: (1 - w) * correctness + w * format."""
        w = self.format_weight
        components = {"correctness": float(correctness), "format": float(fmt), **components}
        return RewardResult((1.0 - w) * correctness + w * fmt, components, reason, correct)
