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


def adaptation_kls(path: str | Path, num_tasks: int = 10, seed: int = 7) -> list[float]:
    """Mean KL(initialization || one adaptation step) on tasks of the artifact's family.

    Tasks come from ``seed`` (not the evaluation's test seed); K and the step size are the
    artifact's. Used to set the artifact's KL bound from what its own steps measure.
    """
    import numpy as np
    import torch

    from controller.adaptation import adapt, task_batch
    from controller.artifact import load_artifact
    from controller.policy import SamplingPolicy, kl_divergence
    from sim.sampler import BatchSampler

    artifact = load_artifact(path)
    meta = artifact.metadata.adaptation
    family = get_family(artifact.metadata.family)
    tasks = family.sample_tasks(np.random.default_rng(seed), num_tasks)
    policy = SamplingPolicy(artifact.spec, artifact.params, seed)
    episodes = BatchSampler(family, 2).sample(tasks, meta.episodes_per_step, policy, seed)
    kls = []
    for i in range(num_tasks):
        batch = task_batch(episodes, i, meta.settings)
        adapted = adapt(artifact.spec, artifact.params, batch, meta.settings.step_size(0))
        with torch.no_grad():
            kl = kl_divergence(artifact.spec, artifact.params, adapted, batch.observations)
        kls.append(float((kl * batch.valid).sum() / batch.valid.sum()))
    return kls


def set_kl_bound(path: str | Path, factor: float = 2.0, num_tasks: int = 10) -> float:
    """Re-save the artifact with max_kl = factor x the largest KL its own steps measure."""
    from controller.artifact import load_artifact

    kls = adaptation_kls(path, num_tasks)
    artifact = load_artifact(path)
    bound = factor * max(kls)
    training = dict(artifact.metadata.training)
    training["max_kl_calibration"] = {"kls": kls, "factor": factor}
    save_artifact(
        path, artifact.spec, artifact.params, family=artifact.metadata.family,
        layout=artifact.layout,
        adaptation=artifact.metadata.adaptation.model_copy(update={"max_kl": bound}),
        training=training, overwrite=True,
    )  # fmt: skip
    return bound


if __name__ == "__main__":  # python -m meta_train.export ARTIFACT: calibrate its KL bound
    import sys

    for artifact_path in sys.argv[1:]:
        print(f"{artifact_path}: max_kl = {set_kl_bound(artifact_path):.3f}")
