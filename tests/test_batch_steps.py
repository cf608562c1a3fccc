"""Batches counted in time steps (``batch_unit: steps``): one rule for the sampler and the
runtime (``sim.episodes.batch_size``), the Controller and the link taking whole episodes until
they hold K x horizon steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from link_support import RawPeer

from controller import Controller, ControllerConfig, load_artifact
from controller.link.lanes import Lanes
from controller.link.server import LinkConfig, LinkServer
from controller.simloop import run
from meta_train.export import fresh_artifact
from sim.episodes import MAX_EPISODES_PER_STEP_FACTOR, batch_size
from sim.tasks import VelocityTask

K, HORIZON = 2, 10  # a batch is 20 steps of whole episodes, at most 8 episodes


def test_batch_size_counts_episodes_or_steps() -> None:
    assert batch_size([5, 5], 2, "episodes", HORIZON) == 2
    assert batch_size([5], 2, "episodes", HORIZON) is None
    assert batch_size([10, 10, 10], K, "steps", HORIZON) == 2  # no early end: K episodes
    assert batch_size([4, 4, 4, 5], K, "steps", HORIZON) is None  # 17 steps, still short
    assert batch_size([4, 4, 4, 5, 6, 9], K, "steps", HORIZON) == 5  # the 5th reaches 23
    cap = MAX_EPISODES_PER_STEP_FACTOR * K
    assert batch_size([1] * (cap - 1), K, "steps", HORIZON) is None
    assert batch_size([1] * (cap + 3), K, "steps", HORIZON) == cap
    assert batch_size([1] * 5, K, "steps", HORIZON, max_episodes=3) == 3
    with pytest.raises(ValueError, match="batch_unit"):
        batch_size([1], K, "minutes", HORIZON)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="below episodes_per_step"):
        batch_size([1], K, "steps", HORIZON, max_episodes=1)


@pytest.fixture(scope="module")
def steps_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_artifact(
        tmp_path_factory.mktemp("steps") / "init",
        "cheetah_velocity",
        seed=2,
        episodes_per_step=K,
        horizon=HORIZON,
        hidden_sizes=(16, 16),
        batch_unit="steps",
    )


def play(controller: Controller, length: int, value: float) -> None:
    """One episode of ``length`` steps through the Controller API, ended by a fall."""
    observation = np.full(17, value, np.float32)
    for t in range(length):
        action = controller.act(observation)
        controller.record(observation, action, 1.0 + t, done=t == length - 1)


def test_controller_adapts_on_whole_episodes_until_k_times_horizon_steps(
    steps_artifact: Path,
) -> None:
    config = ControllerConfig(journal=False, seed=0, max_kl=1e6)
    with Controller.load(steps_artifact, config) as controller:
        assert controller.batch_unit == "steps"
        for i, length in enumerate([4, 4, 4, 5]):
            play(controller, length, 0.1 * i)
        status = controller.status()
        assert status["episodes_ready"] == 4 and not status["batch_ready"]
        assert controller.batch_progress() == (4, False)  # the link's EPISODE reply reads this
        report = controller.adapt()
        assert (
            not report.accepted and "2 x 10 steps" in report.reason and "17 steps" in report.reason
        )
        assert controller.status()["episodes_ready"] == 4  # nothing consumed
        play(controller, 6, 0.5)  # 23 steps: the batch is the five episodes
        play(controller, 9, 0.6)  # one more, not part of it
        assert controller.status()["batch_ready"] and controller.batch_progress() == (6, True)
        report = controller.adapt()
        assert report.accepted, report.reason
        assert report.episode_returns == pytest.approx([10.0, 10.0, 10.0, 15.0, 21.0])
        assert "on 5 episodes" in report.reason


def test_link_says_the_unit_and_when_a_batch_is_ready(steps_artifact: Path) -> None:
    lanes = Lanes(load_artifact(steps_artifact), ControllerConfig(seed=0, max_kl=1e6))
    with LinkServer(lanes, "tcp://127.0.0.1:*", config=LinkConfig()).start() as server:
        peer = RawPeer(server.endpoint)
        try:
            welcome = peer.hello()
            assert welcome["batch_unit"] == "steps" and welcome["episodes_per_step"] == K
            ready = []
            for _ in range(5):  # 5-step episodes: the 4th reaches 20 steps
                for t in range(5):
                    reply, _ = peer.step(np.zeros(17, np.float32), start=t == 0, reward=1.0)
                    assert reply["type"] == "action", reply
                end = {"type": "episode_end", "session": peer.session, "reward": 1.0}
                receipt, _ = peer.call({**end, "terminated": True})
                ready.append(receipt["batch_ready"])
            assert ready == [False, False, False, True, True]
        finally:
            peer.close()


def test_sim_loop_collects_a_whole_batch_before_each_step(tmp_path: Path) -> None:
    # A fresh Ant falls now and then within 60 steps: a phase may need more than K episodes.
    artifact = fresh_artifact(
        tmp_path / "ant",
        "ant_velocity",
        seed=5,
        episodes_per_step=4,
        horizon=60,
        hidden_sizes=(32, 32),
        batch_unit="steps",
    )
    config = ControllerConfig(journal=False, seed=1, max_kl=1e6)
    with Controller.load(artifact, config) as controller:
        result = run(controller, VelocityTask(1.0), steps=1, seed=0, num_threads=1)
    first, adaptation = result.phases[0], result.adaptations[0]
    assert 4 <= len(first.returns) <= 4 * MAX_EPISODES_PER_STEP_FACTOR
    assert len(first.returns) % 4 == 0  # rounds of K simulations
    assert adaptation["accepted"], adaptation
    # the step took a prefix of the phase's episodes that makes one batch; with these seeds
    # some of the first K fell early, so it took more than K and the phase ran a second round
    used = int(adaptation["reason"].split(" on ")[1].split()[0])
    assert 4 < used <= len(first.returns)
