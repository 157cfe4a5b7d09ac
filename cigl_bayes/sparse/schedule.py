"""When the topology changes and by how much (RigL's cosine-decayed drop fraction)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DropSchedule:
    """Update every ``update_every`` steps while ``0 < t < end_step``.

    Drop fraction ``alpha_t = alpha_0 / 2 * (1 + cos(pi * t / end_step))``; layer ``l`` swaps
    ``k = ceil(alpha_t * nnz_l)`` weights at an update.
    """

    end_step: int
    update_every: int = 100
    drop_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.update_every < 1:
            raise ValueError(f"update_every (dT) must be >= 1, got {self.update_every}")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1], got {self.drop_fraction}")
        if self.end_step < 0:
            raise ValueError(f"end_step (T_end) must be >= 0, got {self.end_step}")

    @classmethod
    def for_run(cls, total_steps: int, update_every: int = 100, drop_fraction: float = 0.3, end_fraction: float = 0.75) -> "DropSchedule":
        """The spec's schedule: ``T_end = end_fraction * total_steps``."""
        if not 0.0 <= end_fraction <= 1.0:
            raise ValueError(f"end_fraction must be in [0, 1], got {end_fraction}")
        return cls(int(end_fraction * total_steps), update_every, drop_fraction)

    def is_update(self, step: int) -> bool:
        """Whether the topology is updated at (0-based) optimisation step ``step``."""
        return 0 < step < self.end_step and step % self.update_every == 0

    def fraction(self, step: int) -> float:
        """Cosine-decayed drop fraction at ``step``."""
        if self.end_step == 0:
            return 0.0
        return self.drop_fraction / 2.0 * (1.0 + math.cos(math.pi * min(step, self.end_step) / self.end_step))
