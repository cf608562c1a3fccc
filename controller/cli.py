"""The controller's commands of ``adaptctl``: ``run`` (the sim loop), ``serve``, ``sim-robot``.

Flags map one-to-one onto :class:`ControllerConfig` fields through ``--config FILE`` and
``--set field=value``; the task is given by the flag its family takes (the arguments shared
with ``serve`` and ``sim-robot`` are :mod:`controller.cli_args`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from controller.cli_args import (
    add_config_arguments,
    add_task_arguments,
    body_given,
    check_artifact_use,
    controller_config,
    non_negative_int,
    task_from_args,
)


def cmd_run(args: argparse.Namespace) -> int:
    from controller import simloop
    from controller.runtime import Controller

    if args.video:  # a missing encoder is reported before any episode runs
        from controller.video import require_encoder

        require_encoder()
    if body_given(args):  # the damaged robot (controller/recovery.py)
        from controller import recovery

        return recovery.cmd_run(args)
    from controller.artifact import load_artifact
    from sim.families import get_family

    config = controller_config(args)
    task = task_from_args(args)
    if config.seed is None:
        config = config.model_copy(update={"seed": args.seed})
    if "journal" not in config.model_fields_set and config.journal_dir is None:
        # A simulated run starts from the initialization every time: nothing to resume.
        config = config.model_copy(update={"journal": False})
    artifact = load_artifact(args.artifact)
    check_artifact_use(artifact.metadata, get_family(artifact.metadata.family))
    recorder = simloop.EpisodeRecorder() if args.video else None
    try:
        with Controller(artifact, config) as controller:
            result = simloop.run(
                controller,
                task,
                steps=args.steps,
                seed=args.seed,
                num_threads=args.threads,
                recorder=recorder,
            )
    finally:
        if recorder is not None:
            recorder.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = result.to_json()
    (out / "result.json").write_text(json.dumps(document, indent=1) + "\n")
    simloop.plot(result, task, out / "adaptation.png")
    written = [out / "result.json", out / "adaptation.png"]
    if recorder is not None:
        written.append(simloop.write_video(recorder, result, task, out / "adaptation.mp4"))
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        print(simloop.format_table(result))
        print(f"wrote {', '.join(str(p) for p in written)}")
        if recorder is not None:
            print(f"video (before | after adaptation, side by side): {written[-1]}")
    return 0


def add_subcommands(sub: Any) -> None:
    """Add the controller's commands to ``adaptctl``'s subparsers."""
    p = sub.add_parser("run", help="the sim loop: K episodes, adapt on-device, run adapted")
    p.add_argument("artifact", help="artifact directory, e.g. artifacts/cheetah_velocity")
    add_task_arguments(p)
    p.add_argument("--steps", type=non_negative_int, default=1, help="adaptation steps (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of reset noise and exploration")
    p.add_argument("--threads", type=int, default=2, help="MuJoCo batch threads")
    p.add_argument("--out", default="runs/run", help="where result.json and the plot go")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--damage-at",
        type=int,
        metavar="EPISODE",
        help="damage families: deploy one robot episode after episode, healthy until "
        "EPISODE, then with the body given; the controller's monitor must notice the "
        "drop and re-adapt (writes recovery.png)",
    )
    p.add_argument(
        "--episodes", type=int, help="with --damage-at: episodes in all (default EPISODE + 3 K)"
    )
    p.add_argument(
        "--video",
        action="store_true",
        help="also write adaptation.mp4: an episode before and after adaptation, "
        "side by side (needs the video extra)",
    )
    add_config_arguments(p)
    p.set_defaults(func=cmd_run)
    from controller.link import cli as link_cli

    p = sub.add_parser("serve", help="serve an artifact to a robot over ZeroMQ")
    link_cli.add_serve_arguments(p)
    p.set_defaults(func=link_cli.serve_main)
    p = sub.add_parser("sim-robot", help="a MuJoCo robot that talks to 'adaptctl serve'")
    link_cli.add_sim_robot_arguments(p)
    p.set_defaults(func=link_cli.sim_robot_main)
