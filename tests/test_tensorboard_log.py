"""TensorBoard scalars: the same numbers as the JSON-lines training log, step = iteration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from meta_train.cli import main
from meta_train.tensorboard_log import TensorBoardLog, scalars


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_numeric_fields_become_scalars_text_is_left_out() -> None:
    record = {
        "iteration": 3,
        "return_after": -12.5,
        "accepted": True,
        "kl": 0.01,
        "reject_reason": None,
        "inner_returns": [-20.0, -12.5],
        "note": "x",
    }
    assert scalars(record) == {
        "return_after": -12.5,
        "accepted": 1.0,
        "kl": 0.01,
        "inner_returns/0": -20.0,
        "inner_returns/1": -12.5,
    }


def test_cli_train_writes_the_log_records_as_scalars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "family: navigation2d\niterations: 3\nmeta_batch_size: 3\nepisodes_per_step: 3\n"
        "horizon: 10\ncheckpoint_every: 3\ntorch_threads: 1\npolicy: {hidden_sizes: [8, 8]}\n"
    )
    run, board = tmp_path / "run", tmp_path / "tb"
    assert (
        main(["train", str(config), "--out", str(run), "--quiet", "--tensorboard", str(board)]) == 0
    )
    assert str(board) in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    written = read_scalars(board)
    assert set(written) == set(scalars(records[0]))
    for record in records:
        for tag, value in scalars(record).items():
            assert written[tag][record["iteration"]] == pytest.approx(value, rel=1e-6)


def test_a_log_file_can_be_replayed(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(
        "".join(json.dumps({"iteration": i, "return_after": -i}) + "\n" for i in range(4))
    )
    with TensorBoardLog(tmp_path / "tb") as board:
        assert board.write_log_file(log) == 4
    assert read_scalars(tmp_path / "tb") == {"return_after": {i: -i for i in range(4)}}
