"""Meta-training run configuration: one frozen pydantic model per concern, loaded from YAML.

The defaults are the paper's settings (Finn, Abbeel, Levine, ICML 2017, arXiv 1703.03400, sec.
5.3, and the authors' cbfinn/maml_rl ``maml_examples/maml_trpo_cheetah.py``); YAML files in
``configs/`` override them, one file per shipped artifact. Unknown keys are rejected with the key
named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from controller.adaptation import AdaptationSettings, ParameterNames
from controller.policy import PolicySpec
from meta_train.objective import MetaSettings
from sim.episodes import BatchUnit

Mode = Literal["maml", "pretrained", "oracle"]
# the authors' test tasks, drawn from task_seed, or drawn from task_seed outside the training range
TaskDraw = Literal["paper", "seeded", "out_of_distribution", "dead_motor"]

RENAMED_KEYS: dict[str, str] = {
    "episodes_per_task": "episodes_per_step",
    "meta.adaptation.first_step_size": "meta.adaptation.step_size",
}
"""Old dotted keys -> the one name now (the inner step size α is ``step_size``, K is
``episodes_per_step``). The models accept the old names as aliases, so older run records and
artifacts load; :meth:`TrainConfig.from_yaml` renames them first, so that a file and a ``--set``
override, each under either name, meet under one key."""


class ConfigError(ValueError):
    """A run configuration that cannot be used, with the offending keys named."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolicyConfig(_Frozen):
    """Architecture of the Gaussian MLP (sizes of input and output come from the family)."""

    hidden_sizes: tuple[PositiveInt, ...] = Field(
        default=(100, 100), description="Units per hidden layer (paper: 2 x 100)."
    )
    activation: Literal["relu", "tanh"] = Field(default="relu", description="Paper: ReLU.")
    init_log_std: float = Field(default=0.0, description="Initial log-std (authors: 0).")


class SamplerConfig(_Frozen):
    """Where episodes are collected (docs/scaling.md)."""

    backend: Literal["local", "ray"] = Field(
        default="local",
        description="'local': the batched MuJoCo sampler in this process; 'ray': rollout "
        "workers (Ray actors, each with its own batched sampler) share the meta-batch's tasks "
        "(needs pip install 'adaptctl[ray]').",
    )
    num_threads: PositiveInt = Field(
        default=2, description="MuJoCo batch threads (with 'ray': per worker, = its CPUs)."
    )
    workers: PositiveInt = Field(
        default=1, description="Ray rollout workers ('ray' only); tasks are split among them."
    )
    address: str | None = Field(
        default=None,
        description="Ray cluster to join ('ray' only), e.g. 'ray://head:10001' or 'auto'; "
        "None: the cluster named by RAY_ADDRESS if set, else a Ray instance on this machine.",
    )

    @model_validator(mode="after")
    def _ray_settings_need_ray(self) -> SamplerConfig:
        if self.backend == "local" and (self.workers != 1 or self.address is not None):
            raise ValueError(
                "sampler.workers and sampler.address apply to backend 'ray' only; "
                "set sampler.backend: ray, or remove them"
            )
        return self


class EvalConfig(_Frozen):
    """The paper's evaluation protocol (sec. 5.3: held-out tasks, returns after 0..n steps)."""

    num_tasks: PositiveInt = Field(default=40, description="Held-out test tasks.")
    tasks: TaskDraw = Field(
        default="paper",
        description="'paper': the test tasks of the authors' test scripts, on which the paper's "
        "numbers were measured (np.random.seed(1) or (2), then uniform draws; "
        "meta_train.paper.PAPER_TEST_DRAWS); 'seeded': num_tasks drawn from task_seed; "
        "'out_of_distribution': num_tasks drawn from task_seed outside the training range "
        "(damage families: two weakened motors, or a payload beyond the training range); "
        "'dead_motor': num_tasks drawn from task_seed as in training with the weakened motor "
        "dead, each motor equally often (damage families).",
    )
    task_seed: int = Field(
        default=1_000_003,
        description="Seeds the evaluation's episodes and, with tasks: seeded, the test tasks; "
        "training draws its tasks from SeedSequence([seed, iteration]) streams, which never "
        "use this seed's stream.",
    )
    gradient_steps: PositiveInt = Field(default=3, description="Report after 0..steps steps.")
    comparator_step_size: PositiveFloat | None = Field(
        default=None,
        description="First fine-tuning step size of the pretrained and random comparators "
        "(later steps half of it); None: the authors' (meta_train.paper.COMPARATOR_STEP_SIZES).",
    )
    comparator_adapted_parameters: ParameterNames | None = Field(
        default=None,
        description="The parameters the pretrained and random comparators' fine-tuning steps "
        "change (names as in meta.adaptation.adapted_parameters); None: every parameter, the "
        "paper's comparators.",
    )
    episodes_per_step: PositiveInt | None = Field(
        default=None, description="K per step; None: the training K (resolved_episodes_per_step)."
    )

    def resolved_episodes_per_step(self, training_episodes_per_step: int) -> int:
        """K of the evaluation: this config's, else the training K given.

        The training K is the run's ``TrainConfig.episodes_per_step``, which an artifact records
        as ``adaptation.episodes_per_step``.
        """
        if self.episodes_per_step is not None:
            return self.episodes_per_step
        return training_episodes_per_step


class TrainConfig(_Frozen):
    """A meta-training (or comparator training) run."""

    family: str = Field(description="Task family name, e.g. 'cheetah_velocity'.")
    mode: Mode = Field(
        default="maml",
        description="'maml': MAML-TRPO; 'pretrained': TRPO on the mixture of tasks; "
        "'oracle': TRPO with the task's features appended to the observation.",
    )
    seed: int = Field(default=1, description="Seeds parameters, tasks and episodes.")
    iterations: PositiveInt = Field(default=500, description="Meta-iterations (paper: 500).")
    meta_batch_size: PositiveInt = Field(
        default=40, description="Tasks per meta-iteration (paper: 40; 2D navigation: 20)."
    )
    episodes_per_step: PositiveInt = Field(
        default=20,
        # Older run records and artifacts call it episodes_per_task.
        validation_alias=AliasChoices("episodes_per_step", "episodes_per_task"),
        description="K, the episodes of each task per gradient step (paper: 20).",
    )
    batch_unit: BatchUnit = Field(
        default="episodes",
        description="'episodes': each task's batch is K episodes; 'steps': whole episodes until "
        "K x horizon time steps, as rllab counts a batch (more episodes for a task whose "
        "episodes end early; sim.sampler.BatchSampler.sample).",
    )
    horizon: PositiveInt | None = Field(default=None, description="None: the family's.")
    torch_threads: PositiveInt = Field(default=2, description="torch intra-op threads.")
    checkpoint_every: PositiveInt = Field(default=5, description="Iterations between saves.")
    selection_window: PositiveInt = Field(
        default=1,
        description="Iterations whose mean training return scores an iteration when keeping the "
        "best one (1: the paper's rule, the iteration's own return; more smooths out the luck of "
        "a meta-batch's task draw).",
    )
    init_from: str | None = Field(
        default=None,
        description="An artifact directory whose parameters start the run instead of a fresh "
        "initialization (e.g. the domain-randomized comparator, to meta-train adaptation from a "
        "robust policy); its policy must have this run's layout, or, for an oracle, the same "
        "layout without the task features (their first-layer weights start at zero). None: "
        "fresh (seed).",
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The policy.")
    meta: MetaSettings = Field(default_factory=MetaSettings, description="Meta-optimiser.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="Sampling.")
    evaluation: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")

    @model_validator(mode="after")
    def _inner_steps_need_maml(self) -> TrainConfig:
        if self.mode != "maml" and self.meta.inner_steps != 1:
            raise ValueError(
                f"meta.inner_steps applies to mode 'maml' only; mode '{self.mode}' trains one "
                "policy without adaptation"
            )
        return self

    @model_validator(mode="after")
    def _adapted_parameters_exist(self) -> TrainConfig:
        # The names depend on the layers only (controller.policy.PolicySpec.parameter_shapes).
        known = list(
            PolicySpec(
                observation_size=1, action_size=1, hidden_sizes=self.policy.hidden_sizes
            ).parameter_shapes
        )
        fields = {
            "meta.adaptation.adapted_parameters": self.meta.adaptation.adapted_parameters,
            "evaluation.comparator_adapted_parameters": (
                self.evaluation.comparator_adapted_parameters
            ),
        }
        for field, names in fields.items():
            unknown = [name for name in names or () if name not in known]
            if unknown:
                raise ValueError(
                    f"{field} {unknown} are not parameters of this policy; its parameters: {known}"
                )
        if self.meta.adaptation.adapted_parameters is None:
            return self
        if self.mode != "maml":
            raise ValueError(
                "meta.adaptation.adapted_parameters applies to mode 'maml' only (a comparator "
                "is fine-tuned in every parameter)"
            )
        return self

    @property
    def adaptation(self) -> AdaptationSettings:
        return self.meta.adaptation

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Load ``path``; ``overrides`` (dotted keys, e.g. ``{"iterations": 3}``) win."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read config {path}: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of keys to values")
        for old, new in RENAMED_KEYS.items():
            _rename_key(data, old, new)
        for dotted, value in (overrides or {}).items():
            dotted = RENAMED_KEYS.get(dotted, dotted)
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
            )
            raise ConfigError(f"invalid config {path}: {problems}") from error


def _rename_key(data: dict[str, Any], old: str, new: str) -> None:
    """Move the value at dotted key ``old`` to ``new`` in place, when ``old`` is there."""
    *parents, old_leaf = old.split(".")
    node: Any = data
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    new_leaf = new.rsplit(".", 1)[-1]
    if isinstance(node, dict) and old_leaf in node and new_leaf not in node:
        node[new_leaf] = node.pop(old_leaf)
