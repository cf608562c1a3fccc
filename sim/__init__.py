"""Task families and batched MuJoCo simulation for adaptctl (numpy and mujoco only, no torch)."""

from sim.episodes import Episodes
from sim.families import FAMILY_NAMES, Family, get_family
from sim.sampler import BatchSampler
from sim.tasks import DirectionTask, GoalTask, InvalidTaskError, Task, VelocityTask

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
