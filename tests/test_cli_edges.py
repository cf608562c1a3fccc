"""adaptctl's edges: refused arguments, mismatched artifacts, Ctrl-C, each with a clear message."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from link_support import family_artifact

from meta_train import cli
from meta_train.export import fresh_artifact

REPO = Path(__file__).resolve().parent.parent
ORACLE = REPO / "artifacts" / "comparators" / "cheetah_velocity-oracle"


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """adaptctl's exit status (argparse's SystemExit included) and its stderr."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    return status, capsys.readouterr().err


def test_run_refuses_negative_steps_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = family_artifact(tmp_path / "init")
    out = tmp_path / "out"
    status, err = run_main(
        capsys, "run", str(artifact), "--target-velocity", "1.0", "--steps", "-2", "--out", str(out)
    )
    assert status == 2 and "--steps" in err and "negative" in err and "Traceback" not in err
    assert not out.exists()


def test_run_names_an_oracle_artifact_instead_of_a_shape_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = run_main(
        capsys, "run", str(ORACLE), "--target-velocity", "1.0", "--out", str(tmp_path / "out")
    )
    assert status == 2 and "oracle artifact" in err and "task:" in err, err
    assert "shape" not in err


@pytest.mark.parametrize(
    ("flag", "family", "oracle", "expected"),
    [
        ("--maml", "navigation2d", False, "trained on navigation2d, not cheetah_velocity"),
        ("--maml", "cheetah_velocity", True, "oracle artifact"),
        ("--oracle", "cheetah_velocity", False, "not an oracle artifact"),
    ],
)
def test_eval_names_a_mismatched_artifact(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    family: str,
    oracle: bool,
    expected: str,
) -> None:
    artifact = ORACLE if oracle else fresh_artifact(tmp_path / "a", family, seed=0)
    status, err = run_main(
        capsys,
        "eval",
        str(REPO / "configs" / "cheetah_velocity.yaml"),
        flag,
        str(artifact),
        "--out",
        str(tmp_path / "out"),
    )
    assert status == 2 and expected in err and flag in err, err


def _interrupt(args: argparse.Namespace) -> int:
    raise KeyboardInterrupt


@pytest.mark.parametrize("checkpointed", [False, True])
def test_ctrl_c_offers_resume_only_when_there_is_a_checkpoint(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    checkpointed: bool,
) -> None:
    from meta_train.rundir import CHECKPOINT_DIR

    run = tmp_path / "run"
    if checkpointed:
        (run / CHECKPOINT_DIR).mkdir(parents=True)
    monkeypatch.setattr(cli, "cmd_train", _interrupt)
    status, err = run_main(
        capsys, "train", str(REPO / "configs" / "cheetah_velocity.yaml"), "--out", str(run)
    )
    assert status == 130
    if checkpointed:
        assert f"adaptctl train --resume --out {run}" in err
    else:
        assert "--resume" not in err and "nothing to resume" in err


def test_eval_checks_the_comparators_restricted_names_against_its_own_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the config's policy has two hidden layers; this comparator has one, so no hidden.1.bias
    artifact = fresh_artifact(tmp_path / "a", "cheetah_velocity", hidden_sizes=(8,))
    status, err = run_main(
        capsys,
        "eval",
        str(REPO / "configs" / "cheetah_velocity.yaml"),
        "--random",
        "--pretrained",
        str(artifact),
        "--set",
        "evaluation.comparator_adapted_parameters=[hidden.1.bias]",
        "--out",
        str(tmp_path / "out"),
    )
    assert status == 2 and "--pretrained" in err and "['hidden.1.bias']" in err, err
    assert "hidden.0.bias" in err and not (tmp_path / "out").exists()
