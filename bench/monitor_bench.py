"""How soon the Controller's monitor notices a damage, and how often it cries wolf, on a trained
damage-family policy's own returns (``python -m bench monitor``).

The returns: ``episodes`` episodes of the artifact's initialization, exploration noise included
(the policy a deployed robot serves until it adapts), on the healthy body and on each damage of
``DAMAGES`` (``BatchSampler``, one task per body, 2 threads). Under a fixed policy and body an
episode's return does not depend on the episode before, so streams of them are drawn with
replacement from these samples and replayed through :class:`controller.monitor.ReturnMonitor`
with ``MonitorSettings()`` (or the settings given):

- false alarms per 1000 watched episodes: ``streams`` streams of healthy returns, each a
  reference and ``watched`` episodes, the monitor starting over after an alarm as the
  Controller's recovery does;
- episodes to notice each damage: a healthy reference, then the damaged body's returns until
  the drop (at most ``cap``); median and 90th percentile over ``streams`` streams, and the
  share noticed within K episodes (then K more to adapt: recovery within 2 K).

No timing: the figures do not depend on the machine's load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from controller.artifact import load_artifact
from controller.monitor import MonitorSettings, ReturnMonitor
from controller.policy import SamplingPolicy, stack_params
from sim.families import get_family
from sim.sampler import BatchSampler
from sim.tasks import BodySpace

ARTIFACT = Path("artifacts") / "cheetah_damage"
DAMAGES: dict[str, dict[str, Any]] = {
    "bthigh dead": {"motors": {"bthigh": 0.0}},
    "bthigh dead, 3 kg payload": {"motors": {"bthigh": 0.0}, "payload_kg": 3.0},
    "both shins dead": {"motors": {"bshin": 0.0, "fshin": 0.0}},
    "fthigh at half strength": {"motors": {"fthigh": 0.5}},
    "friction x0.25": {"friction_scale": 0.25},
}


def sample_returns(
    artifact: str | Path, episodes: int, seed: int = 0, threads: int = 2
) -> dict[str, np.ndarray]:
    """Returns of ``episodes`` episodes of the initialization per body: "healthy" and DAMAGES."""
    loaded = load_artifact(artifact)
    family = get_family(loaded.metadata.family)
    space = family.task_space
    if not isinstance(space, BodySpace):
        raise ValueError(f"the monitor bench needs a damage-family artifact, got {family.name}")
    bodies = {"healthy": space.make(), **{k: space.make(**v) for k, v in DAMAGES.items()}}
    params = stack_params([loaded.params] * len(bodies))
    policy = SamplingPolicy(loaded.spec, params, seed)
    sampler = BatchSampler(family, num_threads=threads)
    batch = sampler.sample(list(bodies.values()), episodes, policy, seed=seed)
    returns = (batch.rewards * batch.valid).sum(axis=-1)  # [bodies, episodes]
    return {name: np.asarray(returns[i], dtype=np.float64) for i, name in enumerate(bodies)}


def replay(
    returns: dict[str, np.ndarray],
    settings: MonitorSettings,
    k: int,
    streams: int = 500,
    watched: int = 480,
    cap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """The monitor on bootstrap streams of ``returns`` (module doc)."""
    rng = np.random.default_rng(seed)
    healthy = returns["healthy"]
    alarms = 0
    for _ in range(streams):
        monitor = ReturnMonitor(settings)
        for i, value in enumerate(rng.choice(healthy, settings.window + watched)):
            if monitor.observe(float(value), i) is not None:
                alarms += 1
                monitor.restart()
    out: dict[str, Any] = {
        "false_alarms_per_1000": 1000.0 * alarms / (streams * watched),
        "healthy_mean": float(healthy.mean()),
        "healthy_sd": float(healthy.std(ddof=1)),
        "damages": {},
    }
    for name, damaged in returns.items():
        if name == "healthy":
            continue
        delays = []
        for _ in range(streams):
            monitor = ReturnMonitor(settings)
            for i, value in enumerate(rng.choice(healthy, settings.window)):
                monitor.observe(float(value), i)
            delay = cap
            for j, value in enumerate(rng.choice(damaged, cap)):
                if monitor.observe(float(value), settings.window + j) is not None:
                    delay = j + 1
                    break
            delays.append(delay)
        noticed = np.asarray(delays)
        out["damages"][name] = {
            "mean": float(damaged.mean()),
            "drop_in_sd": float((healthy.mean() - damaged.mean()) / healthy.std(ddof=1)),
            "notice_median": float(np.median(noticed)),
            "notice_p90": float(np.percentile(noticed, 90)),
            "noticed_within_k": float(np.mean(noticed <= k)),
            "never_within_cap": float(np.mean(noticed >= cap)),
        }
    return out


def bench_monitor(
    artifact: str | Path = ARTIFACT,
    episodes: int = 200,
    settings: MonitorSettings | None = None,
    streams: int = 500,
) -> dict[str, Any]:
    """Sample, replay and print the table; returns the numbers (JSON-ready)."""
    settings = settings or MonitorSettings()
    if not Path(artifact).exists():
        raise FileNotFoundError(f"{artifact}: the monitor bench needs a damage-family artifact")
    k = load_artifact(artifact).metadata.adaptation.episodes_per_step
    returns = sample_returns(artifact, episodes)
    result = replay(returns, settings, k, streams=streams)
    print(
        f"{artifact}: {episodes} episodes per body; monitor {settings.model_dump()}; K = {k}\n"
        f"healthy return {result['healthy_mean']:.1f} (sd {result['healthy_sd']:.1f}); "
        f"false alarms {result['false_alarms_per_1000']:.2f} per 1000 episodes"
    )
    print(f"{'damage':<28}{'return':>8}{'drop/sd':>9}{'notice p50':>12}{'p90':>6}{'<= K':>7}")
    for name, row in result["damages"].items():
        print(
            f"{name:<28}{row['mean']:>8.1f}{row['drop_in_sd']:>9.2f}{row['notice_median']:>12.0f}"
            f"{row['notice_p90']:>6.0f}{100 * row['noticed_within_k']:>6.0f}%"
        )
    return {
        "artifact": str(artifact),
        "episodes_per_body": episodes,
        "k": k,
        "settings": settings.model_dump(),
        **result,
    }
