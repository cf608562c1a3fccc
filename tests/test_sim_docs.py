"""docs/tasks.md's observation and action tables are generated from the families' names.

Regenerate them after a layout change with ``.venv/bin/python tests/test_sim_docs.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sim.families import Family, get_family

DOC = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"
TABLE_FAMILIES = ("navigation2d", "cheetah_velocity", "ant_velocity")
"""One table per robot; the direction families share their velocity sibling's layout."""

BLOCKS = {
    "position": "point position (x, y)",
    "qpos": "joint positions; the root's x (cheetah) or x, y (ant) are left out",
    "qvel": "joint velocities, root's included (linear then angular for the ant's free joint)",
    "cfrc_ext": "per body (world left out; ant.xml leaves the feet unnamed: `body<id>`), the "
    "external (contact) force as MuJoCo's com-based 6-vector: torque x, y, z then force x, y, z, "
    "world-aligned, about the robot's centre of mass; each clipped to [-1, 1]",
}


def observation_table(family: Family) -> str:
    """Markdown table of ``family``'s observation, one row per consecutive block of entries."""
    rows: list[tuple[str, list[str]]] = []
    for name in family.observation_names:
        block, _, entry = name.partition(":")
        if block == "cfrc_ext":
            entry = entry.rpartition(":")[0]  # the body; its 6 components go in the block text
        if rows and rows[-1][0] == block:
            if entry not in rows[-1][1]:
                rows[-1][1].append(entry)
        else:
            rows.append((block, [entry]))
    lines = ["| entries | size | block | contents |", "|---|---|---|---|"]
    start = 0
    for block, entries in rows:
        size = sum(1 for n in family.observation_names if n.split(":")[0] == block)
        names = ", ".join(f"`{e}`" for e in entries)
        lines.append(
            f"| {start}-{start + size - 1} | {size} | `{block}` | {BLOCKS[block]}: {names} |"
        )
        start += size
    lines.append(f"| | **{family.observation_size}** | | total |")
    return "\n".join(lines)


def action_table(family: Family) -> str:
    """Markdown table of ``family``'s action entries and their ranges."""
    lines = ["| entry | actuated joint / axis | low | high |", "|---|---|---|---|"]
    for i, name in enumerate(family.action_names):
        low, high = float(family.action_low[i]), float(family.action_high[i])
        lines.append(f"| {i} | `{name}` | {low:g} | {high:g} |")
    return "\n".join(lines)


TABLES = {"observation-table": observation_table, "action-table": action_table}


def _marker(kind: str, name: str) -> tuple[str, str]:
    return f"<!-- {kind}:{name} -->", f"<!-- /{kind}:{name} -->"


def _pattern(kind: str, name: str) -> re.Pattern[str]:
    begin, end = _marker(kind, name)
    return re.compile(re.escape(begin) + r"\n(?:(.*?)\n)?" + re.escape(end), re.DOTALL)


@pytest.mark.parametrize("kind", TABLES)
@pytest.mark.parametrize("family_name", TABLE_FAMILIES)
def test_docs_tables_are_current(kind: str, family_name: str) -> None:
    match = _pattern(kind, family_name).search(DOC.read_text())
    assert match is not None, f"docs/tasks.md lacks the markers {_marker(kind, family_name)}"
    assert match.group(1) == TABLES[kind](get_family(family_name)), (
        "docs/tasks.md is stale: run .venv/bin/python tests/test_sim_docs.py"
    )


@pytest.mark.parametrize(
    ("direction", "velocity"),
    [("cheetah_direction", "cheetah_velocity"), ("ant_direction", "ant_velocity")],
)
def test_direction_families_share_the_velocity_layout(direction: str, velocity: str) -> None:
    assert get_family(direction).observation_names == get_family(velocity).observation_names


def _regenerate() -> None:
    text = DOC.read_text()
    for kind, make_table in TABLES.items():
        for name in TABLE_FAMILIES:
            begin, end = _marker(kind, name)
            matches = list(_pattern(kind, name).finditer(text))
            if len(matches) != 1:
                raise SystemExit(f"docs/tasks.md needs exactly one {begin} ... {end} block")
            block = f"{begin}\n{make_table(get_family(name))}\n{end}"
            text = text[: matches[0].start()] + block + text[matches[0].end() :]
    DOC.write_text(text)
    print(f"updated {DOC}")


if __name__ == "__main__":
    _regenerate()
