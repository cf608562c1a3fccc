"""The gymnasium ids of the task families: id -> (family name, horizon). Plain data, no imports.

``sim.gym_envs`` registers these when imported; an installed wheel's startup hook
(``adaptctl_gymnasium.py``) reads this file without importing the ``sim`` package, and registers
the same ids when gymnasium is first imported. A new family gets its id here (the horizon is the
family's, ``max_episode_steps``; a test holds the two equal).
"""

ENV_IDS: dict[str, tuple[str, int]] = {
    "adaptctl/Navigation2D-v0": ("navigation2d", 100),
    "adaptctl/HalfCheetahVel-v0": ("cheetah_velocity", 200),
    "adaptctl/HalfCheetahDir-v0": ("cheetah_direction", 200),
    "adaptctl/AntVel-v0": ("ant_velocity", 200),
    "adaptctl/AntDir-v0": ("ant_direction", 200),
    "adaptctl/HalfCheetahDamage-v0": ("cheetah_damage", 200),
    "adaptctl/AntDamage-v0": ("ant_damage", 200),
    "adaptctl/HalfCheetahCrippled-v0": ("cheetah_crippled", 200),
    "adaptctl/HopperVel-v0": ("hopper_velocity", 200),
}

ENTRY_POINT = "sim.gym_envs:TaskFamilyEnv"
