"""Task families and batched MuJoCo simulation for adaptctl (numpy and mujoco only, no torch).

Names are resolved lazily (PEP 562): ``sim.tasks`` (numpy only) can be imported where MuJoCo is
not installed, e.g. by the controller's runtime on a robot.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` when it is first imported; on Linux without a
display (no ``DISPLAY`` or ``WAYLAND_DISPLAY``) it is set to ``egl`` here when unset, so that
frames render off-screen on servers and CI (``sim.render``).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

_HEADLESS = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
if sys.platform.startswith("linux") and _HEADLESS and "MUJOCO_GL" not in os.environ:
    os.environ["MUJOCO_GL"] = "egl"

_EXPORTS = {
    "Episodes": "sim.episodes",
    "FAMILY_NAMES": "sim.families",
    "Family": "sim.families",
    "get_family": "sim.families",
    "BatchSampler": "sim.sampler",
    "DirectionTask": "sim.tasks",
    "GoalTask": "sim.tasks",
    "InvalidTaskError": "sim.tasks",
    "Task": "sim.tasks",
    "VelocityTask": "sim.tasks",
}

__all__ = [
    "FAMILY_NAMES",
    "BatchSampler",
    "DirectionTask",
    "Episodes",
    "Family",
    "GoalTask",
    "InvalidTaskError",
    "Task",
    "VelocityTask",
    "get_family",
]

if TYPE_CHECKING:
    from sim.episodes import Episodes
    from sim.families import FAMILY_NAMES, Family, get_family
    from sim.sampler import BatchSampler
    from sim.tasks import DirectionTask, GoalTask, InvalidTaskError, Task, VelocityTask


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
