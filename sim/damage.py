"""The damaged robot: HalfCheetah and Ant running forward with a perturbed body per simulation.

A :class:`~sim.tasks.BodyTask` changes the model itself, one simulation at a time, through
``mujoco.batch``'s per-simulation model fields (``Batch.expand``), so that N bodies still step
in one batched call:

* motor strength: ``actuator_gainprm[i, 0]`` x g. The robots' actuators are ``motor``s, whose
  force is ``gainprm[0] * ctrl`` (MuJoCo documentation, "Actuation model"); g = 0 leaves the
  joint unactuated, the masked action of the crippled-joint experiments (Nagabandi et al. 2019,
  github.com/iclavera/learning_to_adapt, ``envs/``). The control cost is charged on the
  commanded action: the policy pays for what it asks, not for what the motor delivers.
* payload: ``body_mass[torso]`` + p, and the torso's inertia scaled by (m + p) / m, the payload
  spread like the torso's own mass (its centre of mass does not move); then ``set_const``
  (``mj_setConst``) recomputes what derives from the masses (``body_subtreemass``,
  ``dof_invweight0``, ``actuator_acc0``, ...).
* floor: every geom's ``geom_friction`` x s. A contact's friction is the larger of its two
  geoms' (MuJoCo's default ``mjCombine``), so scaling the floor's alone would leave contacts with
  the robot's equal-friction geoms unchanged; scaling all of them scales every contact by s.

The reward is the direction families' with d = +1: ``v_x - ctrl_cost`` (plus the Ant's contact
cost and survive bonus), horizon 200.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np

from sim.locomotion import LocomotionSimulator, Robot, load_model
from sim.tasks import BodyTask, Task


def torso_mass(robot: Robot) -> float:
    """The torso's own mass in kg (what payload fractions refer to)."""
    return float(load_model(robot).body("torso").mass[0])


def apply_body(model: mujoco.MjModel, base: mujoco.MjModel, task: BodyTask) -> None:
    """Write ``task``'s body into ``model``'s fields, from the unperturbed ``base``.

    For a plain MjModel (``copy.deepcopy`` of the robot's model): call ``mujoco.mj_setConst``
    afterwards. The batched simulator writes the same values into its per-simulation fields.
    """
    torso = base.body("torso").id
    model.actuator_gainprm[:, 0] = base.actuator_gainprm[:, 0] * np.asarray(task.motor_gains)
    mass = base.body_mass[torso]
    model.body_mass[torso] = mass + task.payload_kg
    model.body_inertia[torso] = base.body_inertia[torso] * ((mass + task.payload_kg) / mass)
    model.geom_friction[:] = base.geom_friction * task.friction_scale


WEAK_MOTOR_RGBA = np.array([0.85, 0.1, 0.1, 1.0])
"""The colour a dead motor's limb is drawn in (a weakened one's is blended toward it)."""


def mark_weakened_motors(model: mujoco.MjModel, motor_gains: Sequence[float]) -> None:
    """Colour the geoms that each weakened motor moves, for frames of a damaged robot.

    Actuator i drives a joint (``actuator_trnid``); the geoms of that joint's body are blended
    toward :data:`WEAK_MOTOR_RGBA` by 1 - ``motor_gains[i]`` (a dead motor's limb is red) and
    drawn with their own colour rather than a material's. Only the model's look changes.
    """
    for actuator, gain in enumerate(motor_gains):
        if gain >= 1.0:
            continue
        body = model.jnt_bodyid[model.actuator_trnid[actuator, 0]]
        geoms = np.flatnonzero(model.geom_bodyid == body)
        weight = min(1.0, 1.0 - float(gain))
        model.geom_rgba[geoms] = (1.0 - weight) * model.geom_rgba[geoms] + weight * WEAK_MOTOR_RGBA
        model.geom_matid[geoms] = -1


class DamageSimulator(LocomotionSimulator):
    """N simulations of one robot running forward, each with its own body (a BodyTask)."""

    def __init__(self, robot: Robot, num_sims: int, num_threads: int) -> None:
        # The forward objective is the direction objective with every target +1.
        super().__init__(robot, "direction", num_sims, num_threads)
        base = self._model
        self._torso = base.body("torso").id
        self._gainprm = self._batch.expand("actuator_gainprm")
        self._body_mass = self._batch.expand("body_mass")
        self._body_inertia = self._batch.expand("body_inertia")
        self._geom_friction = self._batch.expand("geom_friction")
        self._bodies: list[BodyTask | None] = [None] * num_sims

    def reset(self, tasks: Sequence[Task], rng: np.random.Generator) -> np.ndarray:
        if len(tasks) != self.num_sims:
            raise ValueError(
                f"expected {self.num_sims} tasks, one per simulation, got {len(tasks)}"
            )
        self.set_bodies([self._body(t) for t in tasks])
        return super().reset(tasks, rng)

    def set_bodies(self, bodies: Sequence[BodyTask]) -> None:
        """Give each simulation its body (only those that change are rewritten)."""
        changed = [i for i, body in enumerate(bodies) if body != self._bodies[i]]
        if not changed:
            return
        base, torso = self._model, self._torso
        ids = np.asarray(changed)
        gains = np.asarray([bodies[i].motor_gains for i in changed], dtype=np.float64)
        payload = np.asarray([bodies[i].payload_kg for i in changed], dtype=np.float64)
        friction = np.asarray([bodies[i].friction_scale for i in changed], dtype=np.float64)
        mass = base.body_mass[torso]
        self._gainprm[ids, :, 0] = base.actuator_gainprm[:, 0] * gains
        self._body_mass[ids, torso] = mass + payload
        self._body_inertia[ids, torso] = (
            base.body_inertia[torso] * ((mass + payload) / mass)[:, None]
        )
        self._geom_friction[ids] = base.geom_friction * friction[:, None, None]
        self._batch.set_const(ids=ids)  # masses -> subtree masses, invweights, actuator_acc0
        for i in changed:
            self._bodies[i] = bodies[i]

    def body(self, index: int) -> BodyTask | None:
        """Simulation ``index``'s body (None before its first reset)."""
        return self._bodies[index]

    def get_model(self, index: int) -> mujoco.MjModel:
        """A copy of simulation ``index``'s model, with its body's fields (for tests, rendering)."""
        return self._batch.get_model(index)

    def _body(self, task: Task) -> BodyTask:
        if not isinstance(task, BodyTask):
            raise TypeError(f"{self.robot.name} damage takes BodyTask tasks, got {task!r}")
        if len(task.motor_gains) != self._model.nu:
            raise ValueError(
                f"{self.robot.name} has {self._model.nu} motors; the body gives "
                f"{len(task.motor_gains)} gains"
            )
        return task

    def _task_parameter(self, task: Task) -> float:
        self._body(task)
        return 1.0  # run forward: d = +1
