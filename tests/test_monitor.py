"""The return monitor: triggers on a drop, not on noise; the Controller re-adapts after one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from controller import Controller, ControllerConfig
from controller.monitor import MonitorSettings, ReturnMonitor
from meta_train.export import fresh_artifact

K, HORIZON = 4, 10


def test_noise_does_not_trigger() -> None:
    monitor = ReturnMonitor(MonitorSettings())
    returns = np.random.default_rng(0).normal(-50.0, 8.0, size=5000)
    assert all(monitor.observe(float(r)) is None for r in returns)


def test_a_drop_triggers_after_the_consecutive_low_episodes() -> None:
    monitor = ReturnMonitor(MonitorSettings())  # 20 episodes, 2.5 sd, 3 in a row
    rng = np.random.default_rng(1)
    for i, value in enumerate(rng.normal(100.0, 5.0, size=30)):
        assert monitor.observe(float(value), i) is None
    assert monitor.observe(80.0, 30) is None  # one low episode is not yet a drop
    assert monitor.observe(70.0, 31) is None
    assert monitor.observe(75.0, 32) == [30, 31, 32]
    limit = monitor.limit()
    assert limit is not None and limit > 80.0  # the low episodes stayed out of the reference


def test_a_single_outlier_resets_the_count() -> None:
    monitor = ReturnMonitor(MonitorSettings(window=5, consecutive=2))
    for value in (10.0, 11.0, 9.0, 10.5, 9.5):
        monitor.observe(value)
    assert monitor.observe(0.0) is None
    assert monitor.observe(10.0) is None  # normal again
    assert monitor.observe(0.0) is None  # a new count
    assert monitor.observe(0.0) is not None


def test_min_drop_guards_a_flat_reference() -> None:
    monitor = ReturnMonitor(MonitorSettings(window=3, consecutive=1, min_drop=1.0))
    for _ in range(3):
        monitor.observe(5.0)
    assert monitor.observe(4.5) is None
    assert monitor.observe(3.9) is not None


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        MonitorSettings(window=1)
    with pytest.raises(ValidationError):
        MonitorSettings(treshold_sd=2.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ControllerConfig.model_validate({"monitor": {"window": 0}})


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
    settings = MonitorSettings(window=6, threshold_sd=3.0, consecutive=2, min_drop=0.5)
    return Controller.load(path, ControllerConfig(seed=0, monitor=settings, max_kl=1e6))


def test_controller_notices_the_drop_collects_k_episodes_and_adapts(
    controller: Controller,
) -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        _episode(controller, rng, 1.0)
    assert controller.status()["monitor"]["state"] == "watching"
    assert controller.status()["adaptation_steps"] == 0
    _episode(controller, rng, -1.0)
    _episode(controller, rng, -1.0)  # the second low episode: a drop
    status = controller.status()
    assert status["monitor"]["state"] == "collecting" and status["monitor"]["drops"] == 1
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


def recovery_kinds(controller: Controller) -> list[str]:
    assert controller.recovery is not None
    return [event["kind"] for event in controller.recovery.events]


def test_without_a_monitor_nothing_watches(tmp_path: Path) -> None:
    path = fresh_artifact(tmp_path / "a", "cheetah_velocity", episodes_per_step=K, horizon=HORIZON)
    controller = Controller.load(path, ControllerConfig(seed=0))
    assert controller.recovery is None and controller.status()["monitor"] is None
