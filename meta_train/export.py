"""Artifacts from a task family: its robot-facing layout, and freshly initialized bundles.

Training exports its best parameters through :func:`family_layout`; tests and benchmarks that
need an artifact before any training build one with :func:`fresh_artifact`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.adaptation import AdaptationSettings
from controller.artifact import ArtifactAdaptation, IOLayout, save_artifact
from controller.policy import PolicySpec, init_params
from sim.families import Family, get_family


def family_layout(family: Family, task_features: bool = False) -> IOLayout:
    """The observation/action layout of ``family``; with the oracle's task features appended."""
    names = family.observation_names
    if task_features:
        size = family.task_space.feature_size
        names += tuple(f"task:{family.name}:{i}" for i in range(size))
    return IOLayout(
        observation_size=len(names),
        action_size=family.action_size,
        observation_names=names,
        action_names=family.action_names,
        action_low=tuple(float(x) for x in family.action_low),
        action_high=tuple(float(x) for x in family.action_high),
    )


def fresh_artifact(
    path: str | Path,
    family_name: str,
    *,
    seed: int = 0,
    episodes_per_step: int = 20,
    horizon: int | None = None,
    hidden_sizes: tuple[int, ...] = (100, 100),
    settings: AdaptationSettings | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """A freshly initialized (untrained) policy for ``family_name``, saved as an artifact."""
    family = get_family(family_name)
    spec = PolicySpec(
        observation_size=family.observation_size,
        action_size=family.action_size,
        hidden_sizes=hidden_sizes,
    )
    save_artifact(
        path,
        spec,
        init_params(spec, seed),
        family=family.name,
        layout=family_layout(family),
        adaptation=ArtifactAdaptation(
            episodes_per_step=episodes_per_step,
            horizon=horizon or family.horizon,
            settings=settings or AdaptationSettings(),
        ),
        training=dict(training or {"note": f"fresh initialization, seed {seed}"}),
        overwrite=True,
    )
    return Path(path)
