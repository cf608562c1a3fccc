"""The embedded Controller: journaled by default, and the episodes it keeps out of adaptation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from link_support import family_artifact

from controller import Controller, ControllerConfig, load_artifact
from controller.journal import default_journal_dir

HORIZON = 5


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    return family_artifact(tmp_path / "init", horizon=HORIZON, step_size=0.01)


def play(ctl: Controller, steps: int = 3, value: float = 0.5, **act: bool) -> bool:
    """One episode on stream 0; whether the controller kept it."""
    for t in range(steps):
        observation = np.full(17, value * (t + 1), np.float32)
        ctl.record(observation, ctl.act(observation, **act), 1.0, False)
    return ctl.end_episode() is not None


def test_a_controller_journals_by_default_and_a_new_one_restores(
    artifact: Path, _state_dir: Path
) -> None:
    digest = load_artifact(artifact).digest
    with Controller.load(artifact, ControllerConfig(seed=0)) as ctl:
        assert play(ctl) and play(ctl)
        assert ctl.status()["journal"] == str(
            default_journal_dir("cheetah_velocity", digest) / "journal.bin"
        )
        assert str(_state_dir) in ctl.status()["journal"]
        report = ctl.adapt()
        assert report.accepted, report.reason
        assert play(ctl)
        adapted = ctl.policy_id
    with Controller.load(artifact, ControllerConfig(seed=0)) as again:
        assert again.policy_id == adapted and again.generation == 1
        assert again.status()["episodes_ready"] == 1
        assert "adapted 1 step(s)" in again.restored
    with Controller.load(artifact, ControllerConfig(journal=False)) as memory_only:
        assert memory_only.generation == 0 and memory_only.status()["journal"] is None


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("mean action", "mean action"),
        ("safe action", "safe action"),
        ("longer than the horizon", "exceed the horizon"),
        ("marked", "the robot applied"),
    ],
)
def test_episodes_that_cannot_feed_a_policy_gradient_are_dropped_with_a_reason(
    artifact: Path, case: str, expected: str
) -> None:
    with Controller.load(artifact, ControllerConfig(seed=0, journal=False)) as ctl:
        if case == "mean action":
            kept = play(ctl, deterministic=True)
        elif case == "safe action":
            kept = play(ctl, steps=1, value=3e38)  # a finite float32 the policy overflows on
        elif case == "longer than the horizon":
            kept = play(ctl, steps=HORIZON + 1)
        else:
            ctl.mark_episode(0, "the robot applied an action the controller did not send")
            kept = play(ctl)
        assert not kept and expected in (ctl.drop_reason() or ""), ctl.drop_reason()
        assert play(ctl, steps=HORIZON) and ctl.drop_reason() is None  # a clean one is kept
    allowed = ControllerConfig(seed=0, journal=False, adapt_on_mean_actions=True)
    with Controller.load(artifact, allowed) as ctl:
        assert play(ctl, deterministic=True)
