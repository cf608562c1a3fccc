"""The return monitor: triggers on a drop, not on noise; the Controller re-adapts after one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from controller import Controller, ControllerConfig
from controller.monitor import MonitorSettings, ReturnMonitor, worse_by
from meta_train.export import fresh_artifact

K, HORIZON = 4, 10


def false_alarms_per_1000(returns: Callable[[int], np.ndarray], streams: int = 100) -> float:
    """Alarms per 1000 watched episodes of an unchanged robot, starting over after each alarm
    as the Controller's recovery does."""
    settings, watched, alarms = MonitorSettings(), 300, 0
    for _ in range(streams):
        monitor = ReturnMonitor(settings)
        for value in returns(settings.window + watched):
            if monitor.observe(float(value)) is not None:
                alarms += 1
                monitor.restart()
    return 1000.0 * alarms / (streams * watched)


def test_noise_rarely_triggers() -> None:
    rng = np.random.default_rng(0)
    assert false_alarms_per_1000(lambda n: rng.normal(-50.0, 8.0, size=n)) < 5.0


def test_heavy_tailed_noise_rarely_triggers() -> None:
    """Returns with the odd fallen-over episode (t with 3 degrees of freedom)."""
    rng = np.random.default_rng(1)
    assert false_alarms_per_1000(lambda n: 400.0 + 60.0 * rng.standard_t(3, size=n)) < 5.0


def test_stumbling_returns_rarely_trigger() -> None:
    """A trained runner's returns: most episodes near 600, one in five a stumble near 100."""
    rng = np.random.default_rng(2)

    def returns(n: int) -> np.ndarray:
        stumble = rng.random(n) < 0.2
        return np.where(stumble, rng.normal(100.0, 80.0, n), rng.normal(600.0, 50.0, n))

    assert false_alarms_per_1000(returns) < 5.0


def test_a_drop_of_two_spreads_is_noticed_within_a_few_episodes() -> None:
    rng = np.random.default_rng(2)
    delays = []
    for _ in range(50):
        monitor = ReturnMonitor(MonitorSettings())  # reference of 20, k 0.25 sd, h 8 sd
        for i, value in enumerate(rng.normal(100.0, 10.0, size=20)):
            assert monitor.observe(float(value), i) is None
        for j, value in enumerate(rng.normal(80.0, 10.0, size=100)):
            low = monitor.observe(float(value), 20 + j)
            if low is not None:
                delays.append(j + 1)
                # the drop's episodes: since the evidence last stood at zero (CUSUM's estimate
                assert low == list(range(low[0], 21 + j)) and low[0] >= 20  # of the change)
                break
    assert len(delays) == 50 and np.median(delays) <= 8 and max(delays) <= 20


def test_a_drop_smaller_than_the_spread_is_noticed_and_kept_out_of_the_reference() -> None:
    """A drop of one spread: few of its episodes are low enough for a run rule, but the
    evidence adds up, and the drop's episodes never become the reference."""
    monitor = ReturnMonitor(MonitorSettings())
    rng = np.random.default_rng(3)
    for i, value in enumerate(rng.normal(100.0, 10.0, size=40)):
        monitor.observe(float(value), i)
    limit = monitor.limit()
    for j, value in enumerate(rng.normal(90.0, 10.0, size=200)):
        if monitor.observe(float(value), 40 + j) is not None:
            break
    else:
        raise AssertionError("a drop of one spread went unnoticed for 200 episodes")
    assert j < 60
    assert limit is not None and monitor.limit() is not None
    assert abs(monitor.limit() - limit) < 5.0  # the reference did not sink to meet the drop


def test_no_single_episode_is_a_drop_however_bad() -> None:
    monitor = ReturnMonitor(MonitorSettings(window=5))
    for value in (10.0, 11.0, 9.0, 10.5, 9.5):
        monitor.observe(value)
    assert monitor.observe(-1e9) is None  # clipped: adds clip_sd - slack_sd = 3.75 of 8
    assert monitor.status()["episodes_in_evidence"] == 1
    for _ in range(3):
        assert monitor.observe(11.0) is None  # normal again: the evidence decays
    assert monitor.status()["evidence_sd"] == 0.0
    assert monitor.status()["episodes_in_evidence"] == 0
    assert monitor.observe(-1e9) is None
    assert monitor.observe(-1e9) is None  # two in a row: 7.5 of 8
    assert monitor.observe(-1e9) is not None


def test_min_sd_guards_a_flat_reference() -> None:
    settings = MonitorSettings(window=3, decision_sd=1.0, min_sd=1.0)
    monitor = ReturnMonitor(settings)
    for _ in range(3):
        monitor.observe(5.0)
    assert monitor.observe(4.5) is None  # 0.5 sd below: within the slack
    assert monitor.observe(2.9) is not None  # 2.1 sd below: 1.6 of evidence
    flat = ReturnMonitor(MonitorSettings(window=3, decision_sd=1.0))
    for _ in range(3):
        flat.observe(5.0)
    assert flat.observe(4.999) is not None  # no floor: a tiny dip is clip_sd deviations


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        MonitorSettings(window=1)
    with pytest.raises(ValidationError):
        MonitorSettings(treshold_sd=2.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ControllerConfig.model_validate({"monitor": {"window": 0}})
    with pytest.raises(ValidationError, match="clip_sd"):
        MonitorSettings(clip_sd=0.5, slack_sd=0.5)
    with pytest.raises(ValidationError):
        MonitorSettings(consecutive=3)  # type: ignore[call-arg]  # the run rule's, gone


def _episode(controller: Controller, rng: np.random.Generator, reward: float) -> None:
    """One HORIZON-step episode whose every step earns ``reward`` (plus a little noise)."""
    size = controller.spec.observation_size
    for t in range(HORIZON):
        observation = rng.normal(size=size).astype(np.float32)
        action = controller.act(observation)
        noisy = reward + float(rng.normal(0.0, 0.05))
        controller.record(observation, action, noisy, done=t == HORIZON - 1)


@pytest.fixture()
def controller(tmp_path: Path) -> Controller:
    path = fresh_artifact(tmp_path / "a", "cheetah_velocity", episodes_per_step=K, horizon=HORIZON)
    settings = MonitorSettings(window=6, decision_sd=5.0, min_sd=0.5, revert_z=None)
    return Controller.load(path, ControllerConfig(seed=0, monitor=settings, max_kl=1e6))


def test_controller_notices_the_drop_collects_k_episodes_and_adapts(
    controller: Controller,
) -> None:
    rng = np.random.default_rng(0)
    for _ in range(6):  # the reference
        _episode(controller, rng, 1.0)
    assert controller.status()["monitor"]["state"] == "watching"
    assert controller.status()["adaptation_steps"] == 0
    _episode(controller, rng, -1.0)
    _episode(controller, rng, -1.0)  # the second low episode: a drop
    status = controller.status()
    assert status["monitor"]["state"] == "collecting" and status["monitor"]["drops"] == 1
    assert controller.recovery is not None and controller.recovery.events[0]["low"] == [6, 7]
    assert status["episodes_ready"] == 2  # the healthy episodes are gone, the low ones kept
    _episode(controller, rng, -1.0)
    assert controller.status()["adaptation_steps"] == 0
    _episode(controller, rng, -1.0)  # K episodes of the new body: adapt
    status = controller.status()
    assert status["adaptation_steps"] == 1 and status["monitor"]["state"] == "watching"
    assert status["monitor"]["reference_episodes"] == 0  # a new reference, the adapted policy's
    assert recovery_kinds(controller) == ["drop", "adapted"]


def test_a_drop_while_adapted_restarts_from_the_initialization(controller: Controller) -> None:
    rng = np.random.default_rng(1)
    for _ in range(K):
        _episode(controller, rng, 1.0)
    assert controller.adapt().accepted
    for _ in range(8):
        _episode(controller, rng, 1.0)
    _episode(controller, rng, -2.0)
    _episode(controller, rng, -2.0)
    status = controller.status()
    assert status["adaptation_steps"] == 0 and status["episodes_ready"] == 0  # reset
    for _ in range(K):
        _episode(controller, rng, -2.0)
    assert controller.status()["adaptation_steps"] == 1
    assert recovery_kinds(controller) == ["drop", "adapted"]


def test_a_policy_changed_outside_the_monitor_starts_it_over(controller: Controller) -> None:
    """An adaptation, reset or swap the user makes changes what the returns should be: the
    monitor takes the new policy's returns as its reference instead of calling them a drop."""
    rng = np.random.default_rng(3)
    for _ in range(K):
        _episode(controller, rng, 1.0)
    assert controller.adapt().accepted
    for _ in range(8):
        _episode(controller, rng, 1.0)  # the adapted policy's reference, and two watched
    assert controller.status()["monitor"]["reference_episodes"] == 6
    controller.reset()  # the user's: the initialization earns less on this task
    for _ in range(8):
        _episode(controller, rng, -2.0)
    status = controller.status()["monitor"]
    assert status["drops"] == 0 and status["state"] == "watching"
    assert status["reference_mean"] == pytest.approx(-2.0 * HORIZON, abs=1.0)
    for _ in range(2):
        _episode(controller, rng, -5.0)  # and a drop from there is still noticed
    assert recovery_kinds(controller)[0] == "drop"


@pytest.mark.parametrize(("adapted_reward", "kept"), [(-3.0, False), (-0.5, True)])
def test_a_step_that_earns_less_than_the_initialization_is_reverted(
    tmp_path: Path, adapted_reward: float, kept: bool
) -> None:
    path = fresh_artifact(tmp_path / "a", "cheetah_velocity", episodes_per_step=K, horizon=HORIZON)
    settings = MonitorSettings(window=6, decision_sd=5.0, min_sd=0.5)  # revert_z 2
    controller = Controller.load(path, ControllerConfig(seed=0, monitor=settings, max_kl=1e6))
    rng = np.random.default_rng(2)
    for _ in range(settings.window):
        _episode(controller, rng, 1.0)
    for _ in range(K):
        _episode(controller, rng, -1.0)  # noticed after two, adapted after K
    assert controller.status()["adaptation_steps"] == 1
    for _ in range(settings.window):  # the adapted policy's first reference
        _episode(controller, rng, adapted_reward)
    status = controller.status()
    assert status["adaptation_steps"] == (1 if kept else 0)
    assert recovery_kinds(controller) == ["drop", "adapted"] + ([] if kept else ["reverted"])
    if not kept:
        assert controller.generation == 0  # the initialization serves
        assert status["monitor"]["reference_episodes"] == 0  # the initialization's, anew
        assert controller.recovery is not None
        assert "standard errors below" in controller.recovery.events[-1]["reason"]
    controller.close()


def test_worse_by_is_welchs_statistic() -> None:
    later, earlier = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]
    se = np.sqrt(np.var(later, ddof=1) / 3 + np.var(earlier, ddof=1) / 4)
    assert worse_by(later, earlier) == pytest.approx((5.5 - 2.0) / se)
    assert worse_by(earlier, later) < 0
    assert worse_by([1.0, 1.0], [2.0, 2.0]) == float("inf")


def recovery_kinds(controller: Controller) -> list[str]:
    assert controller.recovery is not None
    return [event["kind"] for event in controller.recovery.events]


def test_without_a_monitor_nothing_watches(tmp_path: Path) -> None:
    path = fresh_artifact(tmp_path / "a", "cheetah_velocity", episodes_per_step=K, horizon=HORIZON)
    controller = Controller.load(path, ControllerConfig(seed=0))
    assert controller.recovery is None and controller.status()["monitor"] is None
