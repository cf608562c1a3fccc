"""Episode lengths and returns of random actions on the authors' Ant and on gymnasium's.

``python -m sim.ant_episodes [--sims N] [--seed S]`` runs N simulations of ``ant_velocity``
(velocity targets drawn from the family) with actions drawn from N(0, 1) (a freshly
initialised Gaussian policy's noise; clipped to the control range) for the 200-step horizon,
once with the Ant as the family runs it (rllab's model, ``locomotion.RLLAB_ANT``) and once with
gymnasium v5's physics (``locomotion.GYMNASIUM_V5``), and prints the mean episode length, the
share of episodes that ended early and the mean return of each.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from sim import locomotion
from sim.families import get_family

HORIZON = 200


def random_episodes(physics: locomotion.Physics, num_sims: int, seed: int) -> dict[str, float]:
    """Mean length, early-termination share and mean return of random-action episodes."""
    robot = dataclasses.replace(locomotion.ANT, physics=physics)
    sim = locomotion.LocomotionSimulator(robot, "velocity", num_sims, num_threads=2)
    rng = np.random.default_rng(seed)
    sim.reset(get_family("ant_velocity").sample_tasks(rng, num_sims), rng)
    alive = np.ones(num_sims, dtype=bool)
    lengths, returns = np.zeros(num_sims), np.zeros(num_sims)
    for _ in range(HORIZON):
        actions = rng.standard_normal((num_sims, sim.model.nu)).astype(np.float32)
        result = sim.step(actions, None if alive.all() else alive)
        reward = np.sum(list(result.reward_terms.values()), axis=0)
        returns += np.where(alive, reward, 0.0)
        lengths += alive
        alive &= ~result.terminated
    return {
        "mean_length": float(lengths.mean()),
        "ended_early": float(1.0 - alive.mean()),
        "mean_return": float(returns.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=400, help="episodes per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| Ant model | control step | mean length | ended early | mean return |")
    print("|---|---|---|---|---|")
    for name, physics in (
        ("rllab (ours)", locomotion.RLLAB_ANT),
        ("gymnasium v5", locomotion.GYMNASIUM_V5),
    ):
        row = random_episodes(physics, args.sims, args.seed)
        step = (physics.timestep or 0.01) * physics.frame_skip
        print(
            f"| {name} | {step:.2f} s | {row['mean_length']:.1f} | "
            f"{100 * row['ended_early']:.1f} % | {row['mean_return']:.1f} |"
        )


if __name__ == "__main__":
    main()
