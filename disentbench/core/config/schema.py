"""The study config's schema: the pydantic models a validated study config is made of.

These models are the contract between a study file and the engine: every
setting a study can have, its type, default, bounds and help text, with
``extra="forbid"`` everywhere so a typo is an error rather than a silently
ignored key; numbers must be finite and booleans are not numbers. They say
what a valid structure is and nothing else: plugin params are checked against
each plugin's own config class, problems are worded and files are read
elsewhere in ``core.config`` (``load``, ``problems``, ``files``), so the engine
can import the models without any of that.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


def _not_a_boolean(what: str) -> Callable[[Any], Any]:
    # pydantic's lax mode reads true/false as 1/0; in a study config that is always a typo
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"{str(value).lower()} is a boolean, not {what}; give a number")
        return value

    return check


Int = Annotated[int, BeforeValidator(_not_a_boolean("a whole number"))]
Float = Annotated[float, BeforeValidator(_not_a_boolean("a number"))]

NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"

#: MLflow's own limits (mlflow.utils.validation): an experiment name, a run name (the parent run is
#: named "STUDY YYYY-MM-DD HH:MM:SS", 20 characters more than the study's name).
MAX_EXPERIMENT_NAME_LENGTH = 500
MAX_STUDY_NAME_LENGTH = 200
#: Default limit on the number of runs a study's grid may expand to (study_v1 is 12,600); raise it with
#: ``max_runs`` in the config or ``disentbench run --max-runs N``.
DEFAULT_MAX_RUNS = 100_000
#: A seed count above this is refused even under a raised max_runs: the list alone would not fit in memory.
MAX_SEED_COUNT = 10_000_000


def _path_safe(what: str, value: str) -> str:
    """A name used as a folder name (reports, checkpoints) must not be '.', '..' or only dots."""
    if value.strip(".") == "":
        raise ValueError(f"{what} {value!r} is not a usable folder name ('.' and '..' mean other folders); rename it")
    return value


class _Strict(BaseModel):
    # allow_inf_nan=False: .inf / .nan in a float setting is an error, not a value
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def plugin_shorthand(value: Any) -> Any:
    # "mig" is shorthand for {"name": "mig"}
    return {"name": value} if isinstance(value, str) else value


class PluginRef(_Strict):
    """A plugin by name with its params (checked later against the plugin's own schema)."""

    name: str = Field(min_length=1, description="Registered plugin name (see `disentbench plugins`).")
    params: dict[str, Any] = Field(default_factory=dict, description="Plugin parameters.")


class TrainingOverride(_Strict):
    """Training settings one model entry sets for its own runs, over the study's ``training``."""

    steps: Int | None = Field(
        None,
        ge=1,
        description="Optimizer steps of this model's runs (default: training.steps). study_v1 gives FactorVAE "
        "150,000: the study's train op advanced its step counter twice per update (VAE and discriminator).",
    )
    batch_size: Int | None = Field(None, ge=1, description="Minibatch size of this model's runs (default: training.batch_size).")


class ModelEntry(PluginRef):
    sweep: dict[str, list[Any]] = Field(
        default_factory=dict, description="Swept params: {param: [values]}; the grid is their product."
    )
    training: TrainingOverride = Field(
        default_factory=TrainingOverride,
        description="Per-model training overrides (steps, batch_size); part of each run's identity and key.",
    )

    @field_validator("sweep")
    @classmethod
    def _non_empty(cls, sweep: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in sweep.items():
            if len(values) == 0:
                raise ValueError(f"sweep over {key!r} has no values; give at least one or remove it")
        return sweep

    @model_validator(mode="after")
    def _no_overlap(self) -> ModelEntry:
        both = sorted(set(self.sweep) & set(self.params))
        if both:
            raise ValueError(f"{', '.join(both)} is both fixed in params and swept; keep one")
        return self


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def device_name(value: str) -> str:
    """``value`` if it names a device a config may give (auto, cpu, cuda, cuda:N, mps); else ValueError."""
    if not _DEVICE.match(value):
        raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
    return value


class TrainingConfig(_Strict):
    steps: Int = Field(300_000, ge=1, description="Optimizer steps per run (study: 300,000).")
    batch_size: Int = Field(64, ge=1, description="Minibatch size (study: 64).")
    learning_rate: Float | None = Field(
        None, gt=0, description="Overrides every model's learning_rate when set (study: 1e-4)."
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    log_every: Int = Field(100, ge=1, description="Log averaged loss terms every N steps.")
    checkpoint_every: Int = Field(10_000, ge=1, description="Write a resumable checkpoint every N steps.")
    channels_last: bool = Field(True, description="NHWC memory layout for convolutions (faster on CPU and GPU).")
    checkpoint_dir: Path = Field(Path(".disentbench/checkpoints"), description="Where run checkpoints live.")
    pack_size: int | Literal["auto"] = Field(
        "auto",
        description="Packed training: runs that differ only in numeric swept hyperparameters and seed are "
        "trained together as one batched computation (core/training/packed/trainer.py), each with its own parameters, "
        "optimizer, data and noise streams, logs, checkpoint and failure; a run's result does not depend "
        "on which runs share its pack. auto: on CUDA as many as fit in free GPU memory (measured once per "
        "model, dataset and batch size), elsewhere 1; N: at most N runs per pack; 1: never pack.",
    )
    bf16: bool = Field(
        False,
        description="Packed training on CUDA: forward pass under bfloat16 autocast (parameters, optimizer and "
        "loss sums stay float32). Faster, but not exact: results differ from float32 training by rounding.",
    )
    cuda_graphs: bool = Field(
        True,
        description="Packed training on CUDA: replay each training iteration as a captured CUDA graph "
        "(launch mechanics only; results are unchanged).",
    )
    formulation: Literal["auto", "vmap", "bmm", "grouped", "triton"] = Field(
        "auto",
        description="Packed training: how the conv encoder/decoder of a pack is computed (core/training/packed/trainer.py "
        "SpeedOptions). auto: the fastest measured for the device (triton on CUDA, bmm there without Triton, grouped "
        "elsewhere) where the model uses the study's conv architecture, else vmap; vmap: the model's own loss under torch.func.vmap; "
        "bmm: batched GEMMs; grouped: grouped convolutions in one NHWC layout; triton: fused Triton kernels "
        "(CUDA). All compute the same function; benchmarks/train_throughput.py compares their speed.",
    )
    compile: bool = Field(
        False,
        description="Packed training, experimental: torch.compile the pack's encoder/decoder (62 s to "
        "compile on 2 CPU cores, per pack shape; not yet measured on a GPU; falls back to eager code with a warning if compilation fails).",
    )
    overlap_sampling: bool = Field(
        False,
        description="Packed training on CUDA with cuda_graphs: make each step's per-run random draws on a side "
        "stream, next to the previous step's graph replay (the same numbers; off until measured on a GPU).",
    )
    triton_tuning: dict[str, dict[str, int]] | None = Field(
        None,
        description="Packed training, triton formulation: the kernels' launch settings, inline "
        '({"conv_transpose": {"BLOCK_K": 64}, "conv_transpose[32,1,4,2]": {"WINDOW": 1}}) or the path of a JSON '
        "file that benchmarks/packed_layers.py --sweep ... --write-tuning FILE measured on your card (read when the "
        "config is loaded, so the config records the settings themselves). Launch shapes only: results differ at "
        "most by summation order. Default: the built-in settings.",
    )

    @field_validator("triton_tuning", mode="before")
    @classmethod
    def _triton_tuning(cls, value: Any) -> Any:
        from disentbench.core.training.kernels.tuning import read_tuning_file, tuning_from_json

        if isinstance(value, (str, Path)):
            return read_tuning_file(value)
        if value is not None:
            tuning_from_json(value)
        return value

    @field_validator("pack_size", mode="before")
    @classmethod
    def _pack_size(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"use auto or a whole number of runs >= 1 (1: never pack); got {value!r}")
        if value < 1:
            raise ValueError(f"a pack holds at least 1 run (1: never pack); got {value}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return device_name(value)


def _default_representations() -> list[Literal["mean", "sampled"]]:
    return ["mean"]


class EvaluationConfig(_Strict):
    metrics: list[PluginRef] = Field(default_factory=list, description="Metric plugins to score every run with.")
    tasks: list[PluginRef] = Field(default_factory=list, description="Downstream-task plugins.")
    representations: list[Literal["mean", "sampled"]] = Field(
        default_factory=_default_representations, min_length=1, description="Which representations to score."
    )
    seed: Int = Field(0, ge=0, description="Evaluation seed: every run is scored on the same data draws.")
    seed_convention: Literal["per_metric", "study", "fixed"] = Field(
        "per_metric",
        description="How each metric's random state derives from the seed. per_metric: one stream per metric "
        "name, shared by the mean and sampled representations (paired comparisons; a metric's draws do not "
        "depend on which others run). study: the 2019 study pipeline's seeds (dlib_reproduce: one master "
        "RandomState(seed) drawing a seed per representation and metric config), with the metric's seed "
        "standing in for numpy's global state where the study left estimators unseeded, so scores equal the "
        "study code's bit for bit. fixed: RandomState(seed) for every metric, as each metric .gin file of the "
        "study says when evaluated alone. See docs/fidelity.md.",
    )
    batch_size: Int = Field(256, ge=1, description="Encoder batch size during evaluation.")
    fast: bool = Field(
        False,
        description="Fast mode: scorers with a fast variant (a 'fast' config field: the logistic-regression task, "
        "5 values of C, 3 folds and tolerance 1e-3 from 5000 training points; the GBT task from 5000 "
        "training points and DCI, trees grown level by level with scikit-learn's candidate splits) use it. Headline scores stay within 0.02 of exact "
        "mode on the benchmark's cases (benchmarks/README.md); runs are tagged evaluation.mode = fast, so compare and analyze "
        "never mix them silently with exact ones. Default: exact, the study's estimators.",
    )
    workers: int | Literal["auto"] = Field(
        "auto",
        description="Threads that score a run's (representation, metric) pairs side by side, BLAS held to one "
        "thread each; scores do not depend on it. auto: one per CPU core, at most 8; 1: in sequence.",
    )

    _shorthand = field_validator("metrics", "tasks", mode="before")(
        lambda values: [plugin_shorthand(v) for v in values] if isinstance(values, list) else values
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"use auto or a whole number of threads >= 1 (1: in sequence); got {value!r}")
        return value

    @property
    def worker_count(self) -> int:
        """Threads for one run's evaluation (``workers``, with auto resolved for this machine)."""
        if self.workers == "auto":
            return max(1, min(8, os.cpu_count() or 1))
        return int(self.workers)

    @property
    def mode(self) -> str:
        """``exact`` or ``fast``, as recorded in each run's ``evaluation.mode`` tag."""
        return "fast" if self.fast else "exact"

    @field_validator("representations")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("representations must not repeat")
        return values


class TrackingConfig(_Strict):
    uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here."
    )
    experiment: str | None = Field(
        None,
        description=f"MLflow experiment name; default the study name (at most {MAX_EXPERIMENT_NAME_LENGTH} characters).",
    )
    index_tag: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Also tag each run with its grid index under this name (study_v1: model_num, "
        "which then equals the original study's model number).",
    )

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("the experiment name is empty; give a name or leave tracking.experiment out")
        if len(value) > MAX_EXPERIMENT_NAME_LENGTH:
            raise ValueError(
                f"the experiment name has {len(value)} characters; MLflow allows at most {MAX_EXPERIMENT_NAME_LENGTH}"
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("the experiment name contains control characters (a newline, a tab...); remove them")
        for part in value.split("/"):
            if part in (".", ".."):
                raise ValueError(f"the experiment name {value!r} has a {part!r} path component; rename it")
        return value


class StudyConfig(_Strict):
    name: str = Field(
        min_length=1,
        max_length=MAX_STUDY_NAME_LENGTH,
        pattern=NAME_PATTERN,
        description=f"Study name (letters, digits, _ . -; at most {MAX_STUDY_NAME_LENGTH} characters).",
    )
    datasets: list[PluginRef] = Field(min_length=1)
    models: list[ModelEntry] = Field(min_length=1)
    seeds: list[Int] = Field(default_factory=lambda: [0], description="Seeds: a list, or a count n meaning 0..n-1.")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    executor: PluginRef = Field(default_factory=lambda: PluginRef(name="local"))
    max_runs: Int = Field(
        DEFAULT_MAX_RUNS,
        ge=1,
        description="Refuse a grid of more runs than this (checked before the grid is expanded); "
        "`disentbench run --max-runs N` overrides it.",
    )

    _shorthand = field_validator("datasets", "models", "executor", mode="before")(
        lambda values: [plugin_shorthand(v) for v in values] if isinstance(values, list) else plugin_shorthand(values)
    )

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("a seed count must be at least 1")
            if value > MAX_SEED_COUNT:
                raise ValueError(f"a seed count of {value} is more than {MAX_SEED_COUNT:,} seeds; give fewer")
            return list(range(value))
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must not repeat")
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be >= 0")
        return seeds

    @field_validator("name")
    @classmethod
    def _name_path_safe(cls, value: str) -> str:
        return _path_safe("the study name", value)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name
