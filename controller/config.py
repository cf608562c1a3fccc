"""Configuration of the runtime controller: one frozen pydantic model.

Fields left at ``None`` take their value from the artifact the controller serves (its actuator
bounds, its K); a YAML file or keyword overrides replace any of them. Resolved values are
computed by methods that take the artifact's metadata, never written back into the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.artifact import ArtifactMetadata
from controller.monitor import MonitorSettings

# About twice the largest mean KL that one step of step_size (α) 0.1 from a fresh 2x100 initialization on
# 20 episodes x 200 steps reaches on the paper's families (measured in docs/artifact.md,
# "Acceptance checks"), so that it refuses only runaway steps. A meta-trained artifact records
# its own bound, calibrated on its own steps (ArtifactAdaptation.max_kl).
DEFAULT_MAX_KL = 2.0


class ConfigError(ValueError):
    """A controller configuration that cannot be used (the message names the field)."""


class ControllerConfig(BaseModel):
    """How a :class:`controller.runtime.Controller` serves, records and adapts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    safe_action: Literal["zeros", "hold"] = Field(
        default="zeros",
        description="Command sent for a non-finite observation: 'zeros' (clipped to the range) "
        "or 'hold' (repeat the last command sent; zeros before the first one).",
    )
    action_low: tuple[float, ...] | None = Field(
        default=None,
        description="Lower clip bound per actuator; None: the artifact's action_low.",
    )
    action_high: tuple[float, ...] | None = Field(
        default=None,
        description="Upper clip bound per actuator; None: the artifact's action_high.",
    )
    journal: bool = Field(
        default=True,
        description="Journal finished episodes and accepted adaptations (fsync'd) so that a "
        "restarted controller restores them; False: memory only (a crash loses them).",
    )
    journal_dir: Path | None = Field(
        default=None,
        description="Directory of the append-only journal; None: the artifact's default, "
        "$ADAPTCTL_STATE_DIR (else $XDG_STATE_HOME/adaptctl, else ~/.local/state/adaptctl) "
        "/journals/FAMILY-DIGEST16.",
    )
    journal_fsync: bool = Field(
        default=True,
        description="fsync the journal after each finished episode, so that a power loss "
        "loses at most the episode in progress (costs about a millisecond per episode).",
    )
    resume: bool = Field(
        default=True,
        description="On load, serve the adapted policy the journal ends with (when it descends "
        "from this artifact) and reuse its unconsumed episodes; False: start from the "
        "initialization, keeping the journal's episodes as history only.",
    )
    adapt_on_mean_actions: bool = Field(
        default=False,
        description="Let episodes served with the mean action (deterministic) feed an "
        "adaptation. Off: the policy gradient needs exploration samples, so such episodes "
        "are dropped at their end.",
    )
    verify_swaps_in_child: bool = Field(
        default=True,
        description="swap() loads and verifies the artifact in a child process (started at "
        "the first swap), so that this Python work does not hold up act() in the serving "
        "thread; False: in the calling thread, no extra process.",
    )
    intra_op_threads: int = Field(
        default=1,
        ge=1,
        description="onnxruntime intra-op threads; 1 keeps a single observation on the "
        "calling thread (no thread-pool hand-off), the lowest latency for a 2x100 MLP.",
    )
    adapt_threads: int = Field(
        default=1,
        ge=1,
        description="Threads of torch and BLAS while adapting (restored afterwards). On cores "
        "that are busy (the robot's own loop), more threads spin waiting for each other and "
        "the step takes many times longer (docs/artifact.md, section 6); raise "
        "it only on a machine with idle cores.",
    )
    max_kl: float | None = Field(
        default=None,
        gt=0.0,
        description="Largest mean KL(pre-adaptation || adapted) over the recorded observations "
        "for which an adaptation is accepted; None: the artifact's bound, else DEFAULT_MAX_KL.",
    )
    episodes_per_step: int | None = Field(
        default=None,
        ge=1,
        description="K, the on-policy episodes one adaptation step uses; None: the artifact's K.",
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        description="Most adaptation steps from the initialization before adapt() refuses "
        "until reset() (each step needs K fresh episodes); None: no limit.",
    )
    seed: int | None = Field(
        default=None,
        description="Seed of the exploration noise; None: fresh entropy from the OS.",
    )
    monitor: MonitorSettings | None = Field(
        default=None,
        description="Watch the episode returns for a drop (the robot changed) and re-adapt "
        "from the initialization (controller/monitor.py); None: no monitor.",
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> ControllerConfig:
        for name in ("action_low", "action_high"):
            value = getattr(self, name)
            if value is not None and not all(np.isfinite(value)):
                raise ValueError(f"{name} must be finite, got {value}")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> ControllerConfig:
        """The config in YAML file ``path``, with ``overrides`` (those not None) on top.

        Unknown keys are refused with the key named, so a typo never silently falls back to a
        default.
        """
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as error:
            raise ConfigError(f"cannot read controller config {path}: {error}") from error
        except yaml.YAMLError as error:
            raise ConfigError(f"controller config {path} is not valid YAML: {error}") from error
        if not isinstance(loaded, dict):
            raise ConfigError(f"controller config {path} must be a mapping of field: value")
        loaded.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(loaded)
        except ValidationError as error:
            raise ConfigError(f"invalid controller config {path}:\n{error}") from error

    def action_bounds(self, metadata: ArtifactMetadata) -> tuple[np.ndarray, np.ndarray]:
        """[A] float32 low and high clip bounds: this config's, else the artifact's."""
        layout = metadata.layout
        low = np.asarray(
            layout.action_low if self.action_low is None else self.action_low, np.float32
        )
        high = np.asarray(
            layout.action_high if self.action_high is None else self.action_high, np.float32
        )
        if low.shape != (layout.action_size,) or high.shape != (layout.action_size,):
            raise ConfigError(
                f"action_low/action_high need {layout.action_size} values (one per actuator: "
                f"{', '.join(layout.action_names)}), got {low.size} and {high.size}"
            )
        if np.any(low > high):
            raise ConfigError(f"action_low {low.tolist()} exceeds action_high {high.tolist()}")
        return low, high

    def resolved_episodes_per_step(self, metadata: ArtifactMetadata) -> int:
        """K: this config's, else the artifact's."""
        if self.episodes_per_step is not None:
            return self.episodes_per_step
        return metadata.adaptation.episodes_per_step

    def resolved_max_kl(self, metadata: ArtifactMetadata) -> float:
        """The KL bound: this config's, else the artifact's, else DEFAULT_MAX_KL."""
        if self.max_kl is not None:
            return self.max_kl
        if metadata.adaptation.max_kl is not None:
            return metadata.adaptation.max_kl
        return DEFAULT_MAX_KL
