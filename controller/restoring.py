"""A controller's state brought back from its journal on load (see docs/artifact.md, section 5)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch

from controller.adapting import Build
from controller.journal import Journal, replay
from controller.recording import Recorder
from controller.serving import ServingPolicy

log = logging.getLogger(__name__)


class Restored(NamedTuple):
    """What the journal gave back."""

    policy: ServingPolicy
    """The policy to serve: the adapted one the journal ends with, else the initialization."""
    recorder: Recorder
    """The serving policy's unconsumed episodes, ready for an adaptation."""
    ready: int
    """How many of them there are."""
    note: str
    """What was restored, in words ("" when nothing was)."""


def restore(
    journal: Journal,
    initial: ServingPolicy,
    resume: bool,
    new_recorder: Callable[[int], Recorder],
    build: Build,
) -> Restored:
    """Replay ``journal`` onto a controller serving ``initial`` (``resume``: see
    ``ControllerConfig.resume``); ``new_recorder(next_episode_id)`` makes the recorder."""
    recovered = replay(journal.records, initial.policy_id, resume)
    policy = initial
    if recovered.adapted_params is not None:
        params = {k: torch.from_numpy(v) for k, v in recovered.adapted_params.items()}
        policy = build(params, recovered.adaptations)
    recorder = new_recorder(recovered.next_episode_id)
    recorder.restore(recovered.episodes)
    recorder.keep_only(policy.policy_id)
    ready = recorder.available(policy.policy_id)
    note = ""
    if ready or policy.generation:
        note = (
            f"restored from the journal {journal.path}: the policy adapted "
            f"{policy.generation} step(s) from the initialization and {ready} "
            "recorded episode(s) of it"
        )
        log.info("%s", note)
    if recovered.swapped_to is not None:
        note = (
            f"the journal {journal.path} ends with another initialization swapped in (policy "
            f"{recovered.swapped_to}); what was adapted from it is not restored: load that "
            "artifact with this journal_dir to get it back"
        )
        log.warning("%s", note)
    return Restored(policy, recorder, ready, note)
