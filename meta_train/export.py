"""Artifacts from a task family: its robot-facing layout, freshly initialized bundles, and the
KL bound an artifact's adaptation steps are held to.

Training exports its best parameters through :func:`family_layout` and
:func:`calibrated_adaptation`; tests and benchmarks that need an artifact before any training
build one with :func:`fresh_artifact`. ``python -m meta_train.export ARTIFACT...`` recalibrates
the KL bound of artifacts saved before training did it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.adaptation import AdaptationSettings
from controller.artifact import ArtifactAdaptation, IOLayout, save_artifact
from controller.policy import Params, PolicySpec, init_params
from sim.episodes import BatchUnit
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
    batch_unit: BatchUnit = "episodes",
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
            batch_unit=batch_unit,
            horizon=horizon or family.horizon,
            settings=settings or AdaptationSettings(),
        ),
        training=dict(training or {"note": f"fresh initialization, seed {seed}"}),
        overwrite=True,
    )
    return Path(path)


KL_BOUND_FACTOR = 2.0
"""The runtime accepts a step whose KL is up to this many times the largest its artifact's own
steps measured at export (a bound tight enough to catch a step gone wrong, e.g. on corrupt
episodes, and loose enough for task-to-task spread: the HalfCheetah artifacts' steps spread over
a factor of about 1.5 on ten tasks)."""


def adaptation_kls(
    family: Family,
    spec: PolicySpec,
    params: Params,
    adaptation: ArtifactAdaptation,
    num_tasks: int = 10,
    seed: int = 7,
    num_threads: int = 2,
) -> list[float]:
    """Mean KL(initialization || one adaptation step) on ``num_tasks`` tasks of ``family``.

    Tasks come from ``seed`` (neither training's nor the evaluation's test seed); K, the
    horizon and the step size are the artifact's. Measures what the runtime will see, so the
    artifact's KL bound can be set from it.
    """
    import numpy as np
    import torch

    from controller.adaptation import adapt, task_batch
    from controller.policy import SamplingPolicy, kl_divergence
    from sim.sampler import BatchSampler

    tasks = family.sample_tasks(np.random.default_rng(seed), num_tasks)
    policy = SamplingPolicy(spec, params, seed)
    episodes = BatchSampler(family, num_threads).sample(
        tasks,
        adaptation.episodes_per_step,
        policy,
        seed,
        horizon=adaptation.horizon,
        batch_unit=adaptation.batch_unit,
    )
    settings = adaptation.settings
    kls = []
    for i in range(num_tasks):
        batch = task_batch(episodes, i, settings)
        adapted = adapt(
            spec, params, batch, settings.step_size, parameters=settings.adapted_parameters
        )
        with torch.no_grad():
            kl = kl_divergence(spec, params, adapted, batch.observations)
        kls.append(float((kl * batch.valid).sum() / batch.valid.sum()))
    return kls


def calibrated_adaptation(
    family: Family,
    spec: PolicySpec,
    params: Params,
    adaptation: ArtifactAdaptation,
    num_threads: int = 2,
) -> tuple[ArtifactAdaptation, dict[str, Any]]:
    """``adaptation`` with max_kl = KL_BOUND_FACTOR x the largest KL of its own steps, and the
    measurement (for the artifact's training metadata)."""
    kls = adaptation_kls(family, spec, params, adaptation, num_threads=num_threads)
    bound = KL_BOUND_FACTOR * max(kls)
    record = {"kls": kls, "factor": KL_BOUND_FACTOR}
    return adaptation.model_copy(update={"max_kl": bound}), record


def set_kl_bound(path: str | Path) -> float:
    """Re-save the artifact at ``path`` with its KL bound calibrated on its own steps."""
    from controller.artifact import load_artifact

    artifact = load_artifact(path)
    family = get_family(artifact.metadata.family)
    adaptation, record = calibrated_adaptation(
        family, artifact.spec, artifact.params, artifact.metadata.adaptation
    )
    training = {**artifact.metadata.training, "max_kl_calibration": record}
    save_artifact(
        path,
        artifact.spec,
        artifact.params,
        family=artifact.metadata.family,
        layout=artifact.layout,
        adaptation=adaptation,
        training=training,
        overwrite=True,
    )
    assert adaptation.max_kl is not None
    return adaptation.max_kl


if __name__ == "__main__":  # python -m meta_train.export ARTIFACT: calibrate its KL bound
    import sys

    for artifact_path in sys.argv[1:]:
        print(f"{artifact_path}: max_kl = {set_kl_bound(artifact_path):.3f}")
