"""The verifier child process (controller.verifier): its answers, over a real pipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from controller.artifact import load_artifact
from controller.verifier import Verifier
from sim.families import get_family
from tests.test_runtime import make_artifact


def test_the_child_answers_the_artifact_its_digest_or_why_not(tmp_path: Path) -> None:
    """Unknown digest: the verified artifact itself; known: the digest only; broken: the
    loader's reason as a ValueError; the child serves on after each."""
    path = make_artifact(tmp_path / "a", get_family("cheetah_velocity"), seed=5)
    local = load_artifact(path)
    verifier = Verifier()
    try:
        first = verifier.verify(path)
        assert first.digest == local.digest and first.artifact is not None
        for name, tensor in local.params.items():
            assert torch.equal(first.artifact.params[name], tensor)
        known = verifier.verify(path, frozenset({"0" * 64, local.digest}))
        assert known.digest == local.digest and known.artifact is None
        (tmp_path / "empty").mkdir()
        with pytest.raises(ValueError, match="empty"):
            verifier.verify(tmp_path / "empty")
        fd = verifier.request(path)
        assert fd >= 0
        with pytest.raises(RuntimeError, match="being verified"):
            verifier.request(path)
        assert verifier.answer().digest == local.digest
    finally:
        verifier.close()


def test_the_child_ends_quietly_when_closed_while_it_verifies(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Closed with a request outstanding, the child's answer meets a closed pipe: it exits
    with status 0 and prints nothing (no traceback in the serving process's log)."""
    path = make_artifact(tmp_path / "a", get_family("cheetah_velocity"), seed=6)
    verifier = Verifier()
    verifier.start()
    verifier.verify(path)  # the child is up and its imports done
    process = verifier._process
    assert process is not None
    verifier.request(path)
    verifier.close()
    assert process.exitcode == 0
    assert "Traceback" not in capfd.readouterr().err
