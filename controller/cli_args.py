"""Arguments shared by the controller's commands (``adaptctl run``, ``serve``, ``sim-robot``).

Flags map one-to-one onto :class:`ControllerConfig` fields through ``--config FILE`` and
``--set field=value``; the task is given by the flag its family takes. Both
:mod:`controller.cli` and :mod:`controller.link.cli` build their parsers from these.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

import yaml

from controller.config import ConfigError, ControllerConfig
from sim.tasks import BodySpace, BodyTask, DirectionTask, GoalTask, Task, VelocityTask

if TYPE_CHECKING:
    from controller.artifact import ArtifactMetadata
    from sim.families import Family


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (refused with the value named otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def check_artifact_use(
    metadata: ArtifactMetadata, family: Family, *, oracle: bool = False, flag: str = "artifact"
) -> None:
    """ConfigError naming the mismatch when an artifact cannot serve ``family`` as asked:
    trained on another family, or an oracle (it also observes the task) where a policy that
    adapts is needed, or the other way round."""
    if metadata.family != family.name:
        raise ConfigError(
            f"{flag}: the artifact was trained on {metadata.family}, not {family.name}; give an "
            f"artifact of {family.name} (or the config of {metadata.family})"
        )
    extra = list(metadata.layout.observation_names[family.observation_size :])
    if oracle and not extra:
        raise ConfigError(
            f"{flag}: not an oracle artifact (it observes the {family.observation_size} values "
            "of the family only, no task features)"
        )
    if not oracle and (extra or metadata.layout.observation_size != family.observation_size):
        raise ConfigError(
            f"{flag}: an oracle artifact (it observes {metadata.layout.observation_size} values, "
            f"the family's {family.observation_size} and the task features {extra}); it never "
            "adapts: evaluate it with 'adaptctl eval --oracle', and give 'run' a MAML or "
            "pretrained artifact"
        )


def controller_config(args: argparse.Namespace) -> ControllerConfig:
    """``--config`` YAML (or the defaults) with ``--set key=value`` overrides on top."""
    overrides: dict[str, Any] = {}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes field=value (e.g. seed=3), got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    if args.config:
        return ControllerConfig.from_yaml(args.config, **overrides)
    return ControllerConfig.model_validate(overrides)


def task_from_args(args: argparse.Namespace) -> Task:
    given = [
        (args.target_velocity is not None, "--target-velocity"),
        (args.direction is not None, "--direction"),
        (args.goal is not None, "--goal"),
    ]
    if sum(flag for flag, _ in given) != 1:
        raise ConfigError(
            "give exactly one task: --target-velocity V, --direction ±1 or --goal X Y"
        )
    if args.target_velocity is not None:
        return VelocityTask(float(args.target_velocity))
    if args.direction is not None:
        return DirectionTask(int(args.direction))
    return GoalTask((float(args.goal[0]), float(args.goal[1])))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="controller config YAML (fields of ControllerConfig)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a ControllerConfig field, e.g. --set seed=3",
    )


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-velocity", type=float, help="velocity families: v* (m/s)")
    parser.add_argument("--direction", type=int, choices=(-1, 1), help="direction families")
    parser.add_argument("--goal", type=float, nargs=2, metavar=("X", "Y"), help="2D navigation")
    parser.add_argument(
        "--motor",
        action="append",
        metavar="NAME=GAIN",
        help="damage families: scale motor NAME's strength by GAIN in [0, 1] (0: dead); repeatable",
    )
    parser.add_argument(
        "--payload", type=float, metavar="KG", help="damage families: mass added to the torso (kg)"
    )
    parser.add_argument(
        "--friction",
        type=float,
        metavar="X",
        help="damage families: scale of every contact's friction",
    )


def body_given(args: argparse.Namespace) -> bool:
    """A damage family's body was given (--motor, --payload, --friction or --damage-at)."""
    flags = (args.motor, args.payload, args.friction, getattr(args, "damage_at", None))
    return any(flag is not None for flag in flags)


def body_family_names() -> list[str]:
    """The families whose tasks are bodies (a BodySpace): the damage families."""
    from sim.families import FAMILY_NAMES, get_family

    return [name for name in FAMILY_NAMES if isinstance(get_family(name).task_space, BodySpace)]


def body_from_args(args: argparse.Namespace, family: Family) -> BodyTask:
    """The body of ``--motor NAME=GAIN`` (repeatable), ``--payload KG``, ``--friction X``."""
    space = family.task_space
    if not isinstance(space, BodySpace):
        raise ConfigError(
            f"--motor, --payload, --friction and --damage-at need an artifact of a damage family "
            f"({', '.join(body_family_names())}); this one is of {family.name}"
        )
    motors: dict[str, float] = {}
    for pair in args.motor or []:
        name, sep, value = pair.partition("=")
        try:
            motors[name] = float(value) if sep else math.nan
        except ValueError:
            motors[name] = math.nan
        if not math.isfinite(motors[name]):
            raise ConfigError(f"--motor takes NAME=GAIN with GAIN in [0, 1], got {pair!r}")
    payload = 0.0 if args.payload is None else float(args.payload)
    friction = 1.0 if args.friction is None else float(args.friction)
    return space.make(motors, payload, friction)
