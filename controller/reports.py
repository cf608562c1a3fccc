"""What the controller's updates report: one adaptation step, one swap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class AdaptTimings(NamedTuple):
    """Wall time of the parts of one adaptation, in seconds."""

    baseline_s: float
    """Padding the episodes, returns, baseline fit and advantages."""
    gradient_s: float
    """The policy-gradient step (``controller.adaptation.adapt``)."""
    export_s: float
    """Finite parameters, and the new policy bound to the shared session and smoke-tested."""
    check_s: float
    """The KL bound, from both policies' onnxruntime means on the episodes' observations."""
    swap_s: float
    """Publishing the new policy to the serving path."""
    journal_s: float
    """Appending the adaptation to the journal (after it serves)."""

    @property
    def to_serving_s(self) -> float:
        """From the episodes in hand to the adapted policy serving."""
        return self.baseline_s + self.gradient_s + self.check_s + self.export_s + self.swap_s


@dataclass(frozen=True)
class AdaptReport:
    """What one call of :meth:`Controller.adapt` did."""

    accepted: bool
    reason: str
    """Why it was accepted or rejected, in words."""
    step: int
    """Index of this gradient step from the initialization (0 = first)."""
    step_size: float
    episode_returns: tuple[float, ...]
    """Undiscounted returns of the episodes used (K, or a batch counted in steps; empty when
    none were)."""
    kl: float | None
    """Mean KL(pre-adaptation || adapted) over the episodes' observations (None: not computed)."""
    timings: AdaptTimings | None
    policy_id: str
    """The policy serving after this call."""


@dataclass(frozen=True)
class SwapReport:
    """What one call of :meth:`Controller.swap` did."""

    accepted: bool
    reason: str
    previous_digest: str
    digest: str
    """Digest of the artifact serving after this call."""
    seconds: float
