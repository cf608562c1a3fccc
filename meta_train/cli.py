"""``adaptctl``: the command line. Training and evaluation live here; the controller's
commands (run, serve, sim-robot) are added by ``controller.cli``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meta_train.config import TrainConfig
    from meta_train.evaluate import EvalMethod
    from sim.families import Family

# Imports of the commands are inside them: this module is the ``adaptctl`` entry point of every
# install, and an install with fewer extras must still get a clear message (see ``main``).

COMMAND_EXTRAS = {
    "train": "train",
    "eval": "train",
    "curves": "train",
    "run": "train,video",
    "serve": "runtime",
    "sim-robot": "runtime,sim",
}
"""The extras each command needs (pyproject.toml, [project.optional-dependencies])."""


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``key.sub=value`` pairs onto the config model (values parsed as YAML scalars)."""
    import yaml

    from meta_train.config import ConfigError

    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes key=value (e.g. iterations=50), got {pair!r}")
        result[key] = yaml.safe_load(value)
    return result


def cmd_train(args: argparse.Namespace) -> int:
    from meta_train.config import ConfigError, TrainConfig
    from meta_train.rundir import CONFIG_FILE
    from meta_train.trainer import train

    if args.config is None:  # resume a run with the settings it was started with
        if not (args.resume and args.out):
            raise ConfigError("give a config file, or --resume --out RUN_DIR to continue a run")
        args.config = str(Path(args.out) / CONFIG_FILE)
    config = TrainConfig.from_yaml(args.config, _overrides(args.set))
    out = Path(args.out or Path("runs") / f"{Path(args.config).stem}-{config.mode}-s{config.seed}")
    args.out = str(out)  # for the hint on Ctrl-C (main)
    print(f"training {config.mode} on {config.family}: {config.iterations} iterations -> {out}")
    board = None
    if args.tensorboard:
        from meta_train.tensorboard_log import TensorBoardLog

        board = TensorBoardLog(args.tensorboard)
        print(f"TensorBoard scalars -> {board.log_dir} (tensorboard --logdir {board.log_dir})")
    try:
        state = train(
            config,
            out,
            resume=args.resume,
            progress=not args.quiet,
            max_iterations=args.max_iterations,
            on_record=None if board is None else board.write,
        )
    finally:
        if board is not None:
            board.close()
    print(
        f"done at iteration {state.iteration}; best average return {state.best_return:.2f} "
        f"(iteration {state.best_iteration}); artifact: {out / 'artifact'}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from meta_train import evaluate as ev
    from meta_train import report
    from meta_train.config import ConfigError, TrainConfig
    from meta_train.samplers import make_sampler
    from sim.families import get_family

    config = TrainConfig.from_yaml(args.config, _overrides(args.set))
    family = get_family(config.family)
    torch.set_num_threads(config.torch_threads)
    cfg = config.evaluation
    tasks = ev.evaluation_tasks(family, cfg)
    # every artifact is loaded and checked before the first (minutes-long) evaluation
    methods = _artifact_methods(args, config, family)
    if args.random:
        methods.append(_random_method(config, family))
    if not methods:
        raise ConfigError("nothing to evaluate: give --maml, --pretrained, --oracle or --random")
    sampler = make_sampler(config, family)
    episodes_per_step = cfg.resolved_episodes_per_step(config.episodes_per_step)
    results: dict[str, ev.MethodResult] = {}
    for method in methods:
        source = method.provenance.get("artifact", "a random initialization")
        print(f"evaluating {method.name} ({source}) on {len(tasks)} test tasks ...", flush=True)
        results[method.name] = ev.evaluate(
            method, sampler, tasks, cfg, episodes_per_step, config.horizon, config.batch_unit
        )
    # The command as typed from the repository root, without the machine's path to adaptctl.
    provenance: dict[str, Any] = {
        "command": " ".join(["adaptctl", *sys.argv[1:]]),
        "config": args.config,
        **{method.name: method.provenance for method in methods},
    }
    document = report.results_document(family, tasks, results, provenance)
    path = report.write_results(document, args.out)
    print(report.format_table(document))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def _artifact_methods(
    args: argparse.Namespace, config: TrainConfig, family: Family
) -> list[EvalMethod]:
    """The methods given as artifacts (--maml, --pretrained, --oracle), each checked: trained
    on ``family``, an oracle where one is asked for, and the comparators' restricted parameter
    names its own (its layers may differ from the config's ``policy``)."""
    from controller.artifact import check_adapted_names, load_artifact
    from controller.cli_args import check_artifact_use
    from meta_train import paper
    from meta_train.evaluate import EvalMethod

    cfg = config.evaluation
    # the comparators fine-tune every parameter (the paper), whatever MAML adapts, unless told
    restriction = {"adapted_parameters": cfg.comparator_adapted_parameters}
    methods = []
    for name in ("maml", "pretrained", "oracle"):
        path = getattr(args, name)
        if path is None:
            continue
        artifact = load_artifact(path)
        check_artifact_use(artifact.metadata, family, oracle=name == "oracle", flag=f"--{name}")
        training = artifact.metadata.training
        provenance: dict[str, Any] = {
            "artifact": str(path),
            "digest": artifact.digest,
            "training": {
                k: training.get(k) for k in ("iterations_done", "best_iteration", "best_return")
            },
        }
        settings = artifact.metadata.adaptation.settings  # discount, baseline, step sizes
        if name == "maml":  # the step sizes and parameters it was meta-trained for
            sizes = settings.step_sizes(cfg.gradient_steps)
            provenance["adapted_parameters"] = settings.adapted_parameters
        elif name == "oracle":
            sizes = []
        else:
            settings = settings.model_copy(update=restriction)
            where = f"--{name} with evaluation.comparator_adapted_parameters"
            check_adapted_names(artifact.spec, settings, where)
            sizes = paper.comparator_step_sizes(
                family.name, name, cfg.gradient_steps, cfg.comparator_step_size
            )
            provenance.update(restriction)
        provenance["step_sizes"] = sizes
        methods.append(
            EvalMethod(
                name, artifact.spec, artifact.params, sizes, settings, name == "oracle", provenance
            )
        )
    return methods


def _random_method(config: TrainConfig, family: Family) -> EvalMethod:
    """A freshly initialized policy of the config's layers, fine-tuned with the authors'
    step sizes for random initializations (the comparators' restriction applies)."""
    from controller.policy import init_params
    from meta_train import paper
    from meta_train.evaluate import EvalMethod
    from meta_train.trainer import policy_spec

    cfg = config.evaluation
    restriction = {"adapted_parameters": cfg.comparator_adapted_parameters}
    spec = policy_spec(config.model_copy(update={"mode": "maml"}), family)
    sizes = paper.comparator_step_sizes(
        family.name, "random", cfg.gradient_steps, cfg.comparator_step_size
    )
    return EvalMethod(
        "random",
        spec,
        init_params(spec, config.seed + 1),
        sizes,
        config.adaptation.model_copy(update=restriction),
        False,
        {"step_sizes": sizes, **restriction},
    )


def cmd_curves(args: argparse.Namespace) -> int:
    from meta_train.curves import direction_split, plot_curves, window_table

    if args.by_direction:
        for run in args.runs:
            print(direction_split(run))
        return 0
    if args.table:
        for run in args.runs:
            print(f"{run}\n\n{window_table(run, args.table)}\n")
        return 0
    plot_curves(args.runs, args.out)
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="meta-train (or train a comparator) from a config file")
    p.add_argument(
        "config",
        nargs="?",
        help="YAML config, e.g. configs/cheetah_velocity.yaml; omit it with --resume "
        "to continue with the run's own config.yaml",
    )
    p.add_argument("--out", help="run directory (default runs/<config>-<mode>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set iterations=50 --set mode=oracle",
    )
    p.add_argument("--max-iterations", type=int, help="stop after this many iterations now")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write each iteration's log record as TensorBoard scalars in DIR "
        "(needs the tensorboard extra)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="the paper's test protocol on held-out tasks")
    p.add_argument("config", help="the family's YAML config (evaluation settings)")
    p.add_argument("--maml", help="MAML artifact directory")
    p.add_argument("--pretrained", help="pretrained-comparator artifact directory")
    p.add_argument("--oracle", help="oracle artifact directory")
    p.add_argument("--random", action="store_true", help="also evaluate a random initialization")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="results", help="where the JSON and PNG go")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("curves", help="plot training curves (return before/after adaptation)")
    p.add_argument("runs", nargs="+", help="run directories (with log.jsonl)")
    p.add_argument("--out", default="curves.png", help="PNG to write")
    p.add_argument(
        "--by-direction",
        action="store_true",
        help="direction families: print the training return of backward and forward "
        "tasks (fitted to each iteration's task draw) instead of plotting",
    )
    p.add_argument(
        "--table",
        type=int,
        metavar="N",
        help="print means over windows of N iterations (returns before and after "
        "adaptation, gain, episode length, seconds) instead of plotting",
    )
    p.set_defaults(func=cmd_curves)

    try:
        from controller import cli as controller_cli
    except ModuleNotFoundError as error:  # an install without the runtime extra
        _add_unavailable(sub, ("run", "serve", "sim-robot"), error)
    else:
        controller_cli.add_subcommands(sub)
    return parser


def _add_unavailable(sub: Any, commands: tuple[str, ...], error: ModuleNotFoundError) -> None:
    """Commands whose modules cannot be imported here: each says which extra it needs."""

    def fail(args: argparse.Namespace) -> int:
        raise error

    for command in commands:
        p = sub.add_parser(
            command,
            help=f"(needs: pip install 'adaptctl[{COMMAND_EXTRAS[command]}]')",
            add_help=False,
        )
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=fail)


def _missing_extra(command: str, error: ModuleNotFoundError) -> str:
    extras = COMMAND_EXTRAS.get(command, "train")
    return (
        f"'adaptctl {command}' needs the package {error.name!r}, which is not installed; "
        f"install the extras it needs: pip install 'adaptctl[{extras}]'"
    )


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the input's fault (printed without a traceback), of modules loaded."""
    errors: list[type[BaseException]] = [ValueError, FileNotFoundError]
    for module, name in (
        ("meta_train.rundir", "RunDirError"),
        ("controller.video", "VideoError"),
        ("sim.render", "RenderError"),
        ("meta_train.tensorboard_log", "TensorBoardUnavailable"),
    ):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] in ("meta_train", "controller", "sim"):
            raise
        print(f"adaptctl: error: {_missing_extra(args.command, error)}", file=sys.stderr)
        return 2
    except _user_errors() as error:
        print(f"adaptctl: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adaptctl: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace) -> str:
    """After Ctrl-C: how to continue, only for a training run with a checkpoint to resume."""
    if args.command != "train":
        return ""
    if args.out is None:
        return " before the run directory was chosen: nothing to resume"
    from meta_train.rundir import CHECKPOINT_DIR

    if not (Path(args.out) / CHECKPOINT_DIR).is_dir():
        return f" before the first checkpoint in {args.out}: nothing to resume; start it again"
    return f" (the run resumes from its last checkpoint with: adaptctl train --resume --out {args.out})"


if __name__ == "__main__":
    sys.exit(main())
