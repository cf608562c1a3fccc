"""The shipped artifacts, and whether the one a test needs comes from a finished run."""

from __future__ import annotations

import json
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def finished_artifact(name: str) -> tuple[bool, str]:
    """(usable, reason): the artifact exists and its training ran all its iterations.

    Claims about what a *meta-trained* initialization does (it adapts to an unseen velocity)
    are checked on finished runs only; an artifact exported from a run still in progress says
    so in its metadata (iterations_done < iterations), and the tests that need it skip.
    """
    path = ARTIFACTS / name
    metadata = path / "metadata.json"
    if not metadata.exists():
        return False, f"no shipped artifact at {path}"
    training = json.loads(metadata.read_text()).get("training", {})
    done, planned = training.get("iterations_done"), training.get("iterations")
    if done is None or planned is None or done < planned:
        return False, (
            f"{path} comes from a meta-training run still in progress ({done} of {planned} "
            "iterations; docs/results.md)"
        )
    return True, ""
