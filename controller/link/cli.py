"""Command lines of the link: ``adaptctl serve`` and ``adaptctl sim-robot``.

``add_serve_arguments``/``serve_main`` and ``add_sim_robot_arguments``/``sim_robot_main`` plug
into any argparse parser (``adaptctl``, via controller/cli.py); ``python -m controller.link``
runs them standalone. The controller's config comes as in ``adaptctl run`` (``--config FILE``,
``--set field=value``), the task from the same flags; the link's own config flags are generated
one-to-one from :class:`LinkConfig` (no parallel list of flags): ``--watchdog-timeout-s`` is
``LinkConfig.watchdog_timeout_s``, with its description as help.
"""

from __future__ import annotations

import argparse
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal

import zmq
from pydantic import BaseModel

from controller.cli_args import (
    add_config_arguments,
    add_task_arguments,
    body_from_args,
    body_given,
    controller_config,
    task_from_args,
)
from controller.link.codec import to_wire
from controller.link.security import CurveKeys, load_key_pair, load_public_key
from controller.monitor import MonitorSettings

_SCALARS = (bool, int, float, str, Path)


def add_model_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per scalar field of ``model`` (``--field-name``), default None = unchanged."""
    group = parser.add_argument_group(f"{model.__name__} (defaults: the model's)")
    for name, field in model.model_fields.items():
        kind = _scalar_type(field.annotation)
        if kind is None:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(kind) is Literal:
            group.add_argument(flag, choices=typing.get_args(kind), help=help_text)
        else:
            group.add_argument(flag, type=kind, help=help_text)


def model_overrides(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The flags of ``model``'s fields that were given on the command line."""
    return {n: getattr(args, n) for n in model.model_fields if getattr(args, n, None) is not None}


def _scalar_type(annotation: Any) -> Any:
    """bool/int/float/str/Path/Literal[...] of an annotation (Optional unwrapped), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    if annotation in _SCALARS or typing.get_origin(annotation) is Literal:
        return annotation
    return None


# ---- adaptctl serve -------------------------------------------------------------------------
def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``adaptctl serve ARTIFACT``."""
    from controller.link.server import LinkConfig

    parser.add_argument("artifact", type=Path, help="Artifact directory to serve.")
    parser.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5555",
        help="ZeroMQ endpoint to listen on (default: loopback only). Any non-loopback address "
        "needs --curve-secret-key or --insecure.",
    )
    parser.add_argument(
        "--curve-secret-key",
        type=Path,
        help="The server's CURVE certificate (NAME.key_secret): encrypt and authenticate.",
    )
    parser.add_argument(
        "--curve-authorized",
        type=Path,
        help="Directory of robots' public certificates (*.key) allowed in (default: any robot "
        "that knows the server's public key).",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="Allow a network bind without CURVE (anyone who can reach the port can command).",
    )
    parser.add_argument(
        "--journal-dir",
        type=Path,
        help="Where each session's recorded episodes and adapted policy are journaled (default: "
        "a directory derived from the artifact under $ADAPTCTL_STATE_DIR, else "
        "$XDG_STATE_HOME/adaptctl, else ~/.local/state/adaptctl). A server restarted with the "
        "same arguments restores each session its robot resumes.",
    )
    parser.add_argument(
        "--no-journal",
        action="store_true",
        help="Keep episodes and adaptations in memory only: a crash or restart loses them.",
    )
    parser.add_argument(
        "--monitor",
        action="store_true",
        help="Watch each session's episode returns for a drop (a change of the robot: "
        "damage, payload, floor) and recover by itself: serve the initialization, collect K "
        "episodes and adapt from it (ControllerConfig.monitor; its defaults unless --config or "
        "--set monitor={...} give settings). EPISODE replies then carry 'monitor'.",
    )
    add_config_arguments(parser)
    add_model_arguments(parser, LinkConfig)


def serve_main(args: argparse.Namespace) -> int:
    """Run ``adaptctl serve`` with parsed ``args``; returns the exit status."""
    from controller.link.server import LinkConfig, LinkServer, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = controller_config(args)
    except ValueError as error:  # ConfigError, or a --set value of the wrong type
        raise SystemExit(f"adaptctl serve: {error}") from None
    if args.journal_dir is not None:
        config = config.model_copy(update={"journal_dir": args.journal_dir})
    if args.no_journal:
        config = config.model_copy(update={"journal": False})
    if args.monitor and config.monitor is None:
        config = config.model_copy(update={"monitor": MonitorSettings()})
    keys = None
    if args.curve_secret_key is not None:
        keys = CurveKeys(
            server_secret_file=args.curve_secret_key, authorized_dir=args.curve_authorized
        )
    elif args.curve_authorized is not None:
        raise SystemExit("--curve-authorized needs --curve-secret-key")

    def ready(server: LinkServer) -> None:
        print(f"serving {args.artifact} on {server.endpoint}; {server.journal_note()}", flush=True)

    link_config = LinkConfig(**model_overrides(args, LinkConfig))
    try:
        serve(
            args.artifact,
            args.bind,
            curve_keys=keys,
            insecure=args.insecure,
            config=config,
            link_config=link_config,
            ready=ready,
        )
    except (ValueError, RuntimeError, zmq.ZMQError) as error:
        # LinkSecurityError, ArtifactError, ConfigError (ValueErrors), JournalError (a
        # RuntimeError: another server holds the journal), an endpoint already in use.
        raise SystemExit(f"adaptctl serve: {error}") from None
    return 0


# ---- adaptctl sim-robot ---------------------------------------------------------------------
def add_sim_robot_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``adaptctl sim-robot``."""
    parser.add_argument("--connect", default="tcp://127.0.0.1:5555", help="Server endpoint.")
    parser.add_argument(
        "--family", help="Task family to simulate (default: the one the server's artifact has)."
    )
    add_task_arguments(parser)
    parser.add_argument("--episodes", type=int, default=20, help="K, episodes per adaptation.")
    parser.add_argument("--adapted-episodes", type=int, help="Episodes after (default: K).")
    parser.add_argument("--steps", type=int, default=1, help="Adaptation steps (K each).")
    parser.add_argument("--horizon", type=int, help="Steps per episode (default: the family's).")
    parser.add_argument("--deadline-ms", type=float, default=50.0, help="act() deadline.")
    parser.add_argument("--server-key", type=Path, help="Server's public certificate (CURVE).")
    parser.add_argument("--client-key", type=Path, help="This robot's NAME.key_secret (CURVE).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the simulation's resets.")
    parser.add_argument(
        "--rate-hz", type=float, help="Pace the control loop at this rate (default: flat out)."
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        help="Repeat 'K episodes, adapt' for this long instead of --steps times (a soak).",
    )
    parser.add_argument(
        "--damage-at",
        type=int,
        metavar="EPISODE",
        help="Damage families: deploy episode after episode without ever sending ADAPT, "
        "healthy until EPISODE, then with the body given (--motor, --payload, --friction), "
        "for --adapted-episodes more (default 3 x --episodes); the server, started with "
        "--monitor, must notice the drop and adapt by itself.",
    )
    parser.add_argument("--json", action="store_true", help="Print the result as JSON.")


def sim_robot_main(args: argparse.Namespace) -> int:
    """Run ``adaptctl sim-robot`` with parsed ``args``; prints a before/after summary."""
    from controller.link.client import LinkError, RobotClient
    from controller.link.sim_robot import run_sim_robot

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    server_key = None if args.server_key is None else load_public_key(args.server_key)
    client_keys = None if args.client_key is None else load_key_pair(args.client_key)
    try:
        task = None if body_given(args) else task_from_args(args)
        family = args.family
        if family is None:  # ask the server which family its artifact was trained on
            with RobotClient(
                args.connect, args.deadline_ms, server_key, client_keys=client_keys
            ) as probe:
                family = probe.family
        if task is None:  # a damage family's body: its motor names come from the family
            from sim.families import get_family

            task = body_from_args(args, get_family(family))
        robot = {
            "horizon": args.horizon,
            "deadline_ms": args.deadline_ms,
            "server_public_key": server_key,
            "client_keys": client_keys,
            "seed": args.seed,
            "rate_hz": args.rate_hz,
        }
        if args.damage_at is not None:
            return _deploy(args, family, task, robot)
        result = run_sim_robot(
            args.connect,
            family,
            task,
            args.episodes,
            adapted_episodes=args.adapted_episodes,
            adapt_steps=args.steps,
            duration_s=args.duration_s,
            **robot,
        )
    except (ValueError, LinkError) as error:  # a task outside the family's range, no server
        raise SystemExit(f"adaptctl sim-robot: {error}") from None
    return _print_result(args, result.summary(), result)


def _print_result(args: argparse.Namespace, summary: dict[str, Any], result: Any) -> int:
    """The summary, a line per entry, or with ``--json`` the summary and the whole result."""
    if args.json:
        print(json.dumps({**summary, "result": to_wire(result)}, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>24}: {value}")
    return 0


def _deploy(args: argparse.Namespace, family: str, body: Any, robot: dict[str, Any]) -> int:
    """``sim-robot --damage-at``: print each episode as it ends, then the summary; ``robot``:
    the keyword arguments sim-robot gives every run (link, pace, seed)."""
    from controller.link.sim_robot import EpisodeStats, run_sim_robot_deployment

    def show(phase: str, stats: EpisodeStats) -> None:
        monitor = stats.monitor or {}
        event = (monitor.get("last_event") or {}).get("kind", "")
        print(
            f"{phase:>8} return {stats.episode_return:9.1f}  policy {stats.policy_id[:12]}  "
            f"monitor {monitor.get('state', '-'):>10} {event}",
            flush=True,
        )

    adapted = args.adapted_episodes if args.adapted_episodes is not None else 3 * args.episodes
    result = run_sim_robot_deployment(
        args.connect,
        family,
        body,
        args.damage_at,
        args.damage_at + adapted,
        on_episode=None if args.json else show,
        **robot,
    )
    return _print_result(args, result.summary(), result)


def main(argv: list[str] | None = None) -> int:
    """``python -m controller.link {serve,sim-robot} ...``"""
    parser = argparse.ArgumentParser(prog="python -m controller.link")
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve_arguments(commands.add_parser("serve", help="Serve an artifact over ZeroMQ."))
    add_sim_robot_arguments(commands.add_parser("sim-robot", help="A simulated robot client."))
    args = parser.parse_args(argv)
    return serve_main(args) if args.command == "serve" else sim_robot_main(args)
