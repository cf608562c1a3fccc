"""The robot path under load: the soak bench, one minute (``python -m bench soak`` runs ten)."""

from __future__ import annotations

import pytest

from bench.soak_bench import bench_soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_a_minute_of_four_robots_with_swaps_and_two_server_kills_loses_nothing() -> None:
    figures = bench_soak(minutes=1.0, robots=4, swaps=5, restarts=2)
    assert figures["episodes_lost"] == 0, figures
    assert figures["episodes_recorded"] > 0 and figures["sessions_restored"] > 0, figures
    assert all(n > 0 for n in figures["adaptations_per_robot"]), figures
    assert figures["swaps_accepted"] > 0, figures
