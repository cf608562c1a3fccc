"""HalfCheetah and Ant locomotion tasks, many simulations stepped on MuJoCo's batch thread pool.

Models are built from gymnasium's ``half_cheetah.xml`` and ``ant.xml``. The HalfCheetah runs as
gymnasium's v5 does (frame skip 5, timestep 0.01: one control step is 0.05 s). The Ant runs as
the MAML authors ran it, with rllab's ``vendor/mujoco_models/ant.xml`` values (rll/rllab): timestep
0.02, RK4, one physics step per action (0.02 s), the model's standing pose ``init_qpos`` with
rllab's reset noise, and rllab's contact softness. Observations follow gymnasium's v5
environments; rewards follow the MAML authors' ``half_cheetah_env_rand*`` and ``ant_env_rand*``
(see docs/tasks.md):

* cheetah velocity:  -|v_x - v*|        - 0.05 |a|^2
* cheetah direction:  d * v_x           - 0.05 |a|^2
* ant velocity:      -|v_x - v*| + 1.0  - 0.005 |a|^2 - 0.0005 |clip(cfrc_ext, -1, 1)|^2 + 0.05
* ant direction:      d * v_x           - 0.005 |a|^2 - 0.0005 |clip(cfrc_ext, -1, 1)|^2 + 0.05

v_x is the torso's x displacement over the control step divided by its duration.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import gymnasium
import mujoco
import mujoco.batch
import numpy as np

from sim.simulator import StepResult
from sim.tasks import DirectionTask, Task, VelocityTask

_ASSETS = os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets")
# A sensor that reads accelerations makes mj_forward run mj_rnePostConstraint, which is what
# fills cfrc_ext (the Ant's contact forces); it changes nothing in the physics.
_CONTACT_SENSOR_SITE = "adaptctl_contact_forces"

Objective = Literal["velocity", "direction"]


@dataclass(frozen=True)
class Physics:
    """How a robot's model is stepped and reset.

    Defaults are gymnasium v5's (``MujocoEnv``: frame skip 5 on the model's timestep; reset to
    ``qpos0 + U(-0.1, 0.1)``, ``qvel + 0.1 N(0, 1)``).
    """

    frame_skip: int = 5
    """Physics steps per control step."""
    timestep: float | None = None
    """Physics timestep in seconds; None keeps the model file's."""
    geom_solimp: tuple[float, float, float] | None = None
    """Contact impedance set on every geom; None keeps the model file's."""
    standing_pose: bool = False
    """Reset around the model's ``init_qpos`` custom numeric (rllab's ``MujocoEnv``), not qpos0."""
    qpos_noise: Literal["uniform", "normal"] = "uniform"
    """Reset noise on qpos: U(-s, s) (gymnasium) or s N(0, 1) (rllab)."""
    qpos_noise_scale: float = 0.1
    qvel_noise_scale: float = 0.1
    """Reset noise on qvel: s N(0, 1) (gymnasium and rllab alike)."""


GYMNASIUM_V5 = Physics()
# rll/rllab vendor/mujoco_models/ant.xml: <option timestep="0.02" integrator="RK4"/>, no frame_skip
# numeric (rllab/envs/mujoco/mujoco_env.py then steps once per action), geom default
# solimp=".8 .8 .01" (solref ".02 1" is MuJoCo's default); MujocoEnv.reset: init_qpos +
# 0.01 N(0, 1), init_qvel + 0.1 N(0, 1).
RLLAB_ANT = Physics(
    frame_skip=1,
    timestep=0.02,
    geom_solimp=(0.8, 0.8, 0.01),
    standing_pose=True,
    qpos_noise="normal",
    qpos_noise_scale=0.01,
)


@dataclass(frozen=True)
class Robot:
    """A MuJoCo model and the constants of its reward (MAML authors' values)."""

    name: str
    xml_file: str
    skipped_qpos: int
    """Leading qpos entries left out of the observation (the global x, or x and y)."""
    ctrl_cost_weight: float
    contact_cost_weight: float = 0.0
    survive_bonus: float = 0.0
    velocity_offset: float = 0.0
    """Constant added to the velocity objective (authors' ant: -|v - v*| + 1.0)."""
    healthy_z: tuple[float, float] | None = None
    """Torso height range outside which the episode terminates; None: never terminates."""
    healthy_qpos: tuple[tuple[int, float, float], ...] = ()
    """More (qpos index, low, high) ranges outside which the episode terminates, e.g. a planar
    robot's height (index 1) and pitch (index 2)."""
    physics: Physics = GYMNASIUM_V5

    @property
    def contact_forces_observed(self) -> bool:
        return self.contact_cost_weight > 0.0


HALF_CHEETAH = Robot("half_cheetah", "half_cheetah.xml", skipped_qpos=1, ctrl_cost_weight=0.05)
# gymnasium's hopper.xml as Hopper-v5 steps it (frame skip 4 on its 0.002 s timestep: one control
# step is 0.008 s; reset noise 0.005) with its healthy range (height > 0.7, |pitch| < 0.2) and
# control cost weight 0.001; the reward is the velocity objective plus a survive bonus of 1.
HOPPER = Robot(
    "hopper",
    "hopper.xml",
    skipped_qpos=1,
    ctrl_cost_weight=0.001,
    survive_bonus=1.0,
    healthy_qpos=((1, 0.7, np.inf), (2, -0.2, 0.2)),
    physics=Physics(frame_skip=4, qpos_noise_scale=0.005, qvel_noise_scale=0.005),
)
ANT = Robot(
    "ant",
    "ant.xml",
    skipped_qpos=2,
    ctrl_cost_weight=0.005,
    contact_cost_weight=0.0005,
    survive_bonus=0.05,
    velocity_offset=1.0,
    healthy_z=(0.2, 1.0),
    physics=RLLAB_ANT,
)


@functools.cache
def load_model(robot: Robot) -> mujoco.MjModel:
    """The robot's MuJoCo model; for the Ant with a sensor that makes cfrc_ext computed."""
    spec = mujoco.MjSpec.from_file(os.path.join(_ASSETS, robot.xml_file))
    physics = robot.physics
    if physics.timestep is not None:
        spec.option.timestep = physics.timestep
    if physics.geom_solimp is not None:
        for geom in spec.geoms:
            geom.solimp[:3] = physics.geom_solimp
    if robot.contact_forces_observed:
        spec.body("torso").add_site(name=_CONTACT_SENSOR_SITE)
        spec.add_sensor(
            name=_CONTACT_SENSOR_SITE,
            type=mujoco.mjtSensor.mjSENS_ACCELEROMETER,
            objtype=mujoco.mjtObj.mjOBJ_SITE,
            objname=_CONTACT_SENSOR_SITE,
        )
    with warnings.catch_warnings():
        # gymnasium's ant.xml uses the deprecated 'settotalmass' compiler attribute; the compiled
        # model is the standard one either way.
        warnings.filterwarnings("ignore", message=".*settotalmass.*")
        return spec.compile()


def initial_qpos(robot: Robot) -> np.ndarray:
    """The pose a reset adds its noise to, [nq] float64: the model's ``init_qpos`` custom numeric
    for a robot reset in its standing pose (rllab), else qpos0 (gymnasium).

    The standing pose is not written into the model's qpos0: MuJoCo derives constants from qpos0
    at compile time (e.g. the constraint solver's ``dof_invweight0``), and the authors' model
    kept its compiled qpos0, using ``init_qpos`` only to reset.
    """
    model = load_model(robot)
    if not robot.physics.standing_pose:
        return model.qpos0.copy()
    pose = np.array(model.numeric("init_qpos").data, dtype=np.float64)
    if pose.shape != (model.nq,):
        raise ValueError(f"init_qpos has {pose.size} values; the model has nq = {model.nq}")
    return pose


def observation_layout(robot: Robot) -> tuple[str, ...]:
    """One name per observation entry, e.g. ``qpos:rootz`` or ``cfrc_ext:torso:3``."""
    model = load_model(robot)
    qpos_names: list[str] = []
    qvel_names: list[str] = []
    for j in range(model.njnt):
        name = model.joint(j).name
        if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
            qpos_names += [f"{name}:{c}" for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]
            qvel_names += [f"{name}:{c}" for c in ("vx", "vy", "vz", "wx", "wy", "wz")]
        else:
            qpos_names.append(name)
            qvel_names.append(name)
    names = [f"qpos:{n}" for n in qpos_names[robot.skipped_qpos :]]
    names += [f"qvel:{n}" for n in qvel_names]
    if robot.contact_forces_observed:
        for b in range(1, model.nbody):  # gymnasium v5 leaves out the world body
            # ant.xml leaves the lower-leg bodies unnamed: name them by their MuJoCo body id
            body = model.body(b).name or f"body{b}"
            names += [f"cfrc_ext:{body}:{i}" for i in range(6)]
    return tuple(names)


def action_layout(robot: Robot) -> tuple[str, ...]:
    """One name per action entry: the actuator's name, else its joint's (ant.xml's are unnamed)."""
    model = load_model(robot)
    return tuple(
        model.actuator(i).name or model.joint(model.actuator_trnid[i, 0]).name
        for i in range(model.nu)
    )


def action_bounds(robot: Robot) -> tuple[np.ndarray, np.ndarray]:
    """Actuator control range, (low [A], high [A]) float32."""
    ctrlrange = load_model(robot).actuator_ctrlrange.astype(np.float32)
    return ctrlrange[:, 0].copy(), ctrlrange[:, 1].copy()


class LocomotionSimulator:
    """N simulations of one robot, each with its own velocity or direction task."""

    def __init__(self, robot: Robot, objective: Objective, num_sims: int, num_threads: int) -> None:
        self.robot = robot
        self.objective = objective
        self._model = load_model(robot)
        self._batch = mujoco.batch.Batch(self._model, nsim=num_sims, nthread=num_threads)
        self._qpos = self._batch.bind("qpos")
        self._qvel = self._batch.bind("qvel")
        self._ctrl = self._batch.bind("ctrl")
        self._cfrc_ext = self._batch.bind("cfrc_ext") if robot.contact_forces_observed else None
        # Contact forces at the state after the step: one extra mj_forward, with the sensor that
        # makes it compute cfrc_ext. Reading them from inside mj_step would give an intermediate
        # RK4 stage's forces, so the sensor is switched off during the physics step (it would run
        # mj_rnePostConstraint in every RK4 stage for nothing).
        self._disableflags = (
            self._batch.expand("opt.disableflags") if self._cfrc_ext is not None else None
        )
        self._flags = int(self._model.opt.disableflags)
        self._flags_no_sensor = self._flags | int(mujoco.mjtDisableBit.mjDSBL_SENSOR)
        self._frame_skip = robot.physics.frame_skip
        self._dt = float(self._model.opt.timestep) * self._frame_skip
        self._initial_qpos = initial_qpos(robot)
        self._low, self._high = action_bounds(robot)
        self._target = np.zeros(num_sims)

    @property
    def num_sims(self) -> int:
        return int(self._batch.nsim)

    @property
    def dt(self) -> float:
        """Duration of one control step, seconds."""
        return self._dt

    def reset(self, tasks: Sequence[Task], rng: np.random.Generator) -> np.ndarray:
        n = self.num_sims
        if len(tasks) != n:
            raise ValueError(f"expected {n} tasks, one per simulation, got {len(tasks)}")
        self._target = np.array([self._task_parameter(t) for t in tasks], dtype=np.float64)
        self._batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE)
        model, physics = self._model, self.robot.physics
        scale = physics.qpos_noise_scale
        if physics.qpos_noise == "uniform":
            qpos_noise = rng.uniform(-scale, scale, size=(n, model.nq))
        else:
            qpos_noise = scale * rng.standard_normal(size=(n, model.nq))
        self._qpos[:] = self._initial_qpos + qpos_noise
        self._qvel[:] = physics.qvel_noise_scale * rng.standard_normal(size=(n, model.nv))
        self._batch.forward()
        return self._observe()

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        action = np.clip(actions, self._low, self._high)
        self._ctrl[:] = action
        x_before = self._qpos[:, 0].copy()
        ids = None if active is None or active.all() else np.flatnonzero(active)
        if self._disableflags is None:
            self._batch.step(ids=ids, nstep=self._frame_skip)
        else:
            self._disableflags[:] = self._flags_no_sensor
            try:
                self._batch.step(ids=ids, nstep=self._frame_skip)
            finally:
                self._disableflags[:] = self._flags
            self._batch.forward(ids=ids)  # cfrc_ext at the post-step state
        x_velocity = (self._qpos[:, 0] - x_before) / self._dt
        terms = {"forward": self._forward_term(x_velocity)}
        terms["ctrl_cost"] = -self.robot.ctrl_cost_weight * np.square(action).sum(axis=1)
        if self._cfrc_ext is not None:
            forces = np.clip(self._cfrc_ext, -1.0, 1.0)
            terms["contact_cost"] = -self.robot.contact_cost_weight * np.square(forces).sum(
                axis=(1, 2)
            )
        if self.robot.survive_bonus:
            terms["survive"] = np.full(self.num_sims, self.robot.survive_bonus)
        return StepResult(
            observations=self._observe(),
            reward_terms=terms,
            terminated=self._terminated(),
            infos={"x_velocity": x_velocity},
        )

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the simulations' (qpos [N, nq], qvel [N, nv]), float64."""
        return self._qpos.copy(), self._qvel.copy()

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Overwrite every simulation's qpos [N, nq] and qvel [N, nv]; returns observations.

        Tasks, controls and the solver's warm start are kept. For tests and for replaying a
        recorded state (e.g. gymnasium's reset state in the physics-parity test).
        """
        n, model = self.num_sims, self._model
        if np.shape(qpos) != (n, model.nq) or np.shape(qvel) != (n, model.nv):
            raise ValueError(
                f"expected qpos [{n}, {model.nq}] and qvel [{n}, {model.nv}], "
                f"got {np.shape(qpos)} and {np.shape(qvel)}"
            )
        self._qpos[:] = qpos
        self._qvel[:] = qvel
        self._batch.forward()
        return self._observe()

    def get_data(self, index: int) -> mujoco.MjData:
        """Simulation ``index``'s full MuJoCo state as a new MjData (derived fields not computed).

        Run ``mujoco.mj_forward(simulator.model, data)`` before reading derived quantities.
        """
        return self._batch.get_data(index)

    @property
    def model(self) -> mujoco.MjModel:
        """The MuJoCo model every simulation runs (shared; do not modify)."""
        return self._model

    def _task_parameter(self, task: Task) -> float:
        if self.objective == "velocity":
            if not isinstance(task, VelocityTask):
                raise TypeError(
                    f"{self.robot.name} velocity takes VelocityTask tasks, got {task!r}"
                )
            return task.velocity
        if not isinstance(task, DirectionTask):
            raise TypeError(f"{self.robot.name} direction takes DirectionTask tasks, got {task!r}")
        return float(task.direction)

    def _forward_term(self, x_velocity: np.ndarray) -> np.ndarray:
        if self.objective == "velocity":
            return -np.abs(x_velocity - self._target) + self.robot.velocity_offset
        return self._target * x_velocity

    def _terminated(self) -> np.ndarray:
        ranges = list(self.robot.healthy_qpos)
        if self.robot.healthy_z is not None:
            ranges.append((2, *self.robot.healthy_z))  # a free joint's z
        if not ranges:
            return np.zeros(self.num_sims, dtype=bool)
        healthy = np.isfinite(self._qpos).all(axis=1) & np.isfinite(self._qvel).all(axis=1)
        for index, low, high in ranges:
            healthy &= (self._qpos[:, index] >= low) & (self._qpos[:, index] <= high)
        return ~healthy

    def _observe(self) -> np.ndarray:
        parts = [self._qpos[:, self.robot.skipped_qpos :], self._qvel]
        if self._cfrc_ext is not None:
            forces = np.clip(self._cfrc_ext[:, 1:], -1.0, 1.0)  # v5: world body left out
            parts.append(forces.reshape(self.num_sims, -1))
        return np.concatenate(parts, axis=1).astype(np.float32)
