"""The sampler bench runs end to end at a tiny size, and ``python -m bench`` saves its results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# bench/ is not an installed package (make bench runs it from the repository root)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.__main__ import discover, save
from bench.sampler_bench import bench_sampler, format_table


def test_bench_sampler_measures_all_three_contenders() -> None:
    results = bench_sampler(
        seconds_budget=1.0, num_tasks=2, episodes_per_task=2, gym_envs=2, rounds=1
    )
    for robot in ("cheetah", "ant"):
        row = results[robot]
        assert row["simulations"] == 4 and 20 <= row["horizon"] <= 200
        for key in ("sampler", "raw_batch", "gym_vector"):
            assert row[f"{key}_steps_per_s"] > 0
        assert (
            row["ratio_to_raw_batch"] == row["sampler_steps_per_s"] / row["raw_batch_steps_per_s"]
        )
    assert "| ant_velocity | 4 x" in format_table(results)
    json.dumps(results)  # JSON-ready for runs/bench.json


def test_bench_main_discovers_modules_and_merges_results(tmp_path: Path) -> None:
    assert "sampler" in discover()
    path = tmp_path / "bench.json"
    save({"sampler": {"x": 1.0}}, {}, path)
    save({"link": {"y": 2.0}}, {"runtime": "skipped: no module"}, path)
    record = json.loads(path.read_text())
    assert record["benches"] == {"sampler": {"x": 1.0}, "link": {"y": 2.0}}
    assert record["problems"] == {"runtime": "skipped: no module"}


def test_bench_monitor_samples_every_body_and_replays_the_monitor(tmp_path: Path) -> None:
    from bench.monitor_bench import DAMAGES, bench_monitor, replay
    from controller.monitor import MonitorSettings
    from meta_train.export import fresh_artifact

    path = fresh_artifact(tmp_path / "a", "cheetah_damage", episodes_per_step=4, horizon=10)
    results = bench_monitor(path, episodes=3, settings=MonitorSettings(window=3), streams=5)
    assert results["k"] == 4 and set(results["damages"]) == set(DAMAGES)
    json.dumps(results)
    # the replay on returns whose damage is plain: every stream notices it at once
    rng = np.random.default_rng(0)
    returns = {"healthy": rng.normal(100.0, 1.0, 50), "broken": rng.normal(0.0, 1.0, 50)}
    row = replay(returns, MonitorSettings(), k=4, streams=20)
    assert row["false_alarms_per_1000"] < 5.0
    assert row["damages"]["broken"]["notice_p90"] <= 3
    assert row["damages"]["broken"]["noticed_within_k"] == 1.0


def test_bench_adapt_times_the_actor_during_and_without_adaptations() -> None:
    from bench.adapt_bench import bench_adapt

    results = bench_adapt(rounds=2, episodes=2, horizon=5)
    assert results["rounds"] == 2 and results["actor_safe_actions"] == 0
    during, idle = results["during_adapt"], results["idle"]
    assert during["calls"] == idle["calls"] >= 2  # as many without as with, each round
    assert 0 < idle["p50_us"] <= idle["p99_us"] <= idle["max_us"]
    assert results["adapt_s"]["min"] > 0
    json.dumps(results)


def test_bench_link_serves_every_step_and_measures_both_sides() -> None:
    from bench.link_bench import bench_link

    # more calls than one episode's horizon: the client must end its episodes as a robot does
    results = bench_link(duration_s=0.3, calls=600)
    assert results["link_safe_actions"] == 0
    assert set(results["round_trip"]) == {"link", "echo"}
    assert results["control_loop_1khz"]["link"]["ticks"] == 300
    assert results["in_process"]["server_step_us"] > 0
    json.dumps(results)
