"""Study configs: read YAML/TOML/JSON, validate everything before any work starts.

Validation happens in two layers. The study structure (``StudyConfig``) is a
pydantic model with ``extra="forbid"`` everywhere. Plugin params are then
checked against each plugin's own config class, sweep values one by one, so
an error names the exact path (``models[1].sweep.beta[2]``). Plugin entries are
checked even when the structure has problems elsewhere, and, once everything
else is valid, the grid is checked for entries that expand to the same run
(``datasets`` listed twice, ``beta: [1, 1.0]``). Numbers must be finite and
booleans are not numbers. All problems are collected and raised together as
one :class:`ConfigError`, one line each.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from disentbench.core.registry import PluginRegistry


class ConfigError(ValueError):
    """One or more problems with a study config; ``problems`` has one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


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


class _Strict(BaseModel):
    # allow_inf_nan=False: .inf / .nan in a float setting is an error, not a value
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _plugin_shorthand(value: Any) -> Any:
    # "mig" is shorthand for {"name": "mig"}
    return {"name": value} if isinstance(value, str) else value


class PluginRef(_Strict):
    """A plugin by name with its params (checked later against the plugin's own schema)."""

    name: str = Field(min_length=1, description="Registered plugin name (see `disentbench plugins`).")
    params: dict[str, Any] = Field(default_factory=dict, description="Plugin parameters.")


class ModelEntry(PluginRef):
    sweep: dict[str, list[Any]] = Field(
        default_factory=dict, description="Swept params: {param: [values]}; the grid is their product."
    )

    @field_validator("sweep")
    @classmethod
    def _non_empty(cls, sweep: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in sweep.items():
            if len(values) == 0:
                raise ValueError(f"sweep over {key!r} has no values; give at least one or remove it")
        return sweep

    @model_validator(mode="after")
    def _no_overlap(self) -> "ModelEntry":
        both = sorted(set(self.sweep) & set(self.params))
        if both:
            raise ValueError(f"{', '.join(both)} is both fixed in params and swept; keep one")
        return self


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


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
        if not _DEVICE.match(value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
        return value


class EvaluationConfig(_Strict):
    metrics: list[PluginRef] = Field(default_factory=list, description="Metric plugins to score every run with.")
    tasks: list[PluginRef] = Field(default_factory=list, description="Downstream-task plugins.")
    representations: list[Literal["mean", "sampled"]] = Field(
        default_factory=lambda: ["mean"], min_length=1, description="Which representations to score."
    )
    seed: Int = Field(0, ge=0, description="Evaluation seed: every run is scored on the same data draws.")
    batch_size: Int = Field(256, ge=1, description="Encoder batch size during evaluation.")

    _shorthand = field_validator("metrics", "tasks", mode="before")(
        lambda values: [_plugin_shorthand(v) for v in values] if isinstance(values, list) else values
    )

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
    experiment: str | None = Field(None, description="MLflow experiment name; default the study name.")
    index_tag: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Also tag each run with its grid index under this name (study_v1: model_num, "
        "which then equals the original study's model number).",
    )


class StudyConfig(_Strict):
    name: str = Field(min_length=1, pattern=NAME_PATTERN, description="Study name (letters, digits, _ . -).")
    datasets: list[PluginRef] = Field(min_length=1)
    models: list[ModelEntry] = Field(min_length=1)
    seeds: list[Int] = Field(default_factory=lambda: [0], description="Seeds: a list, or a count n meaning 0..n-1.")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    executor: PluginRef = Field(default_factory=lambda: PluginRef(name="local"))

    _shorthand = field_validator("datasets", "models", "executor", mode="before")(
        lambda values: [_plugin_shorthand(v) for v in values] if isinstance(values, list) else _plugin_shorthand(values)
    )

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("a seed count must be at least 1")
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

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


# ---------------------------------------------------------------------------
# error formatting


def _format_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _unwrap(annotation: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X; a union keeps its one model or container arm."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            arms = [
                a
                for a in typing.get_args(annotation)
                if (isinstance(a, type) and issubclass(a, BaseModel)) or typing.get_origin(a) in (list, dict)
            ]
            if len(arms) != 1:
                return annotation
            annotation = arms[0]
        else:
            return annotation


def _known_keys(root: Any, loc: tuple[Any, ...]) -> list[str] | None:
    """The field names of the pydantic model at ``loc`` below ``root`` (None if it is not a model)."""
    node = root
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            if not isinstance(part, str) or part not in node.model_fields:
                return None
            node = node.model_fields[part].annotation
        elif typing.get_origin(node) is list and isinstance(part, int):
            node = typing.get_args(node)[0]
        elif typing.get_origin(node) is dict and isinstance(part, str):
            node = typing.get_args(node)[1]
        else:
            return None
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return None


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _is_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return False


def _show_number(value: Any) -> str:
    return str(float(value)) if isinstance(value, (str, float)) else repr(value)


_NUMBER_ERRORS = {
    "finite_number",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "multiple_of",
    "int_parsing",
    "int_from_float",
    "float_parsing",
}

_TOO_SHORT = {
    ("datasets",): "no datasets given; list at least one dataset (see `disentbench plugins`)",
    ("models",): "no models given; list at least one model (see `disentbench plugins`)",
}


def _message(err: dict[str, Any], loc: tuple[Any, ...], root: Any) -> str:
    """pydantic's message for one error, reworded where it would not say what to do."""
    kind, value = err["type"], err.get("input")
    if kind in _NUMBER_ERRORS and _is_non_finite(value):
        return f"{_show_number(value)} is not a finite number; give a finite value"
    if kind == "extra_forbidden" and loc and root is not None:
        known = _known_keys(root, loc[:-1])
        if known is not None:
            key = str(loc[-1])
            return f"{err['msg']}; {_did_you_mean(key, known)}known keys: {', '.join(known)}"
    if kind == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == NAME_PATTERN:
        return f"{value!r} may use only letters, digits, '_', '.' and '-' (no spaces); rename it"
    if kind == "too_short" and loc in _TOO_SHORT and root is StudyConfig:
        return _TOO_SHORT[loc]
    return err["msg"].removeprefix("Value error, ")


def _pydantic_problems(exc: ValidationError, prefix: str = "", root: Any = None) -> list[str]:
    """One line per error; ``root`` is the model validated (to name the known keys of a typo)."""
    problems = []
    for err in exc.errors():
        # pydantic puts validator names such as "function-after[...]" in loc; drop them
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        problems.append(f"{_format_loc(prefix, loc) or '<config>'}: {_message(err, loc, root)}")
    return problems


def _value_problems(raw: Any, validated: Any, path: str, problems: list[str]) -> None:
    """Plugin params after validation: no boolean read as a number, no non-finite number.

    Plugin schemas are the plugins' own pydantic models, so these two rules of the
    study config are applied here, comparing what was written with what it became.
    """
    if isinstance(raw, bool) and not isinstance(validated, bool) and isinstance(validated, (int, float)):
        problems.append(f"{path}: {str(raw).lower()} is a boolean, not a number; give a number")
    elif isinstance(validated, float) and not math.isfinite(validated):
        problems.append(f"{path}: {_show_number(validated)} is not a finite number; give a finite value")
    elif isinstance(raw, dict) and isinstance(validated, dict):
        for key in raw:
            if key in validated:
                _value_problems(raw[key], validated[key], f"{path}.{key}", problems)
    elif isinstance(raw, (list, tuple)) and isinstance(validated, (list, tuple)) and len(raw) == len(validated):
        for i, (r, v) in enumerate(zip(raw, validated)):
            _value_problems(r, v, f"{path}[{i}]", problems)


# ---------------------------------------------------------------------------
# loading


def _yaml_problem(path: Path, exc: Any) -> str:
    """``FILE line L, column C: problem (...)`` from a PyYAML error, on one line."""
    import yaml

    mark = exc.problem_mark or exc.context_mark
    where = f"{path} line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(str(exc.problem or exc.context or "cannot parse YAML").split())
    if isinstance(exc, yaml.constructor.ConstructorError):
        hint = "tags such as !!python/... are not allowed in a config; write plain values"
    else:
        hint = "check the YAML syntax there"
    return f"{where}: cannot parse YAML: {problem} ({hint})"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, TOML or JSON file into a dict, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such config file"])
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.MarkedYAMLError as exc:
                raise ConfigError([_yaml_problem(path, exc)]) from None
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError([f"{path}: unknown config format {suffix!r}; use .yaml, .yml, .toml or .json"])
    except ConfigError:
        raise
    except Exception as exc:  # parser errors carry line numbers in their text
        first = " ".join(str(exc).split())
        raise ConfigError([f"{path}: cannot parse {suffix[1:].upper()}: {first}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of study settings"])
    return data


def validate_plugin_params(
    registry: PluginRegistry, kind: str, ref: PluginRef, path: str, problems: list[str]
) -> BaseModel | None:
    try:
        registration = registry.get(kind, ref.name)
    except KeyError as exc:
        message = str(exc.args[0])
        close = difflib.get_close_matches(ref.name, registry.names(kind), n=1) if kind in registry.plugins else []
        if close and "; known:" in message:
            message = message.replace("; known:", f"; did you mean {close[0]!r}? known:", 1)
        problems.append(f"{path}.name: {message}")
        return None
    try:
        config = registration.make_config(ref.params)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, f"{path}.params", registration.config))
        return None
    found: list[str] = []
    _value_problems(ref.params, config.model_dump(), f"{path}.params", found)
    problems.extend(found)
    return None if found else config


def _validate_sweep(registry: PluginRegistry, entry: ModelEntry, path: str, problems: list[str]) -> None:
    schema = registry.get("model", entry.name).config
    for param, values in entry.sweep.items():
        if param not in schema.model_fields:
            known = list(schema.model_fields)
            problems.append(
                f"{path}.sweep.{param}: {entry.name} has no parameter {param!r}; "
                f"{_did_you_mean(param, known)}known: {', '.join(known)}"
            )
            continue
        for j, value in enumerate(values):
            where = f"{path}.sweep.{param}[{j}]"
            try:
                validated = schema.model_validate({**entry.params, param: value})
            except ValidationError as exc:
                for err in exc.errors():
                    if err["loc"] and err["loc"][0] == param:
                        problems.append(f"{where}: {_message(err, tuple(err['loc']), schema)}")
                continue
            _value_problems(value, validated.model_dump().get(param), where, problems)


def _entries(raw: dict[str, Any], key: str, cls: type[PluginRef]) -> list[tuple[int, PluginRef]]:
    """The entries of the list ``raw[key]`` whose own structure is valid (the rest are schema problems)."""
    values = raw.get(key)
    if not isinstance(values, list):
        return []
    entries = []
    for i, value in enumerate(values):
        try:
            entries.append((i, cls.model_validate(_plugin_shorthand(value))))
        except ValidationError:
            pass
    return entries


def validate_study(raw: dict[str, Any], registry: PluginRegistry) -> StudyConfig:
    """Validate a raw config dict fully (structure and every plugin's params), reporting every problem at once.

    Plugin params are checked even where the structure has problems elsewhere: each
    dataset, model, metric, task and executor entry whose own shape is valid is
    checked against its plugin. Only the grid check (no two grid entries that
    expand to the same run) needs a config without any other problem.
    """
    problems: list[str] = []
    config: StudyConfig | None = None
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, root=StudyConfig))

    if config is not None:
        datasets = list(enumerate(config.datasets))
        models = list(enumerate(config.models))
        metrics = list(enumerate(config.evaluation.metrics))
        tasks = list(enumerate(config.evaluation.tasks))
        executors = [(0, config.executor)]
    else:  # the structure has problems: check the plugin entries that are well-formed themselves
        evaluation = raw.get("evaluation") if isinstance(raw.get("evaluation"), dict) else {}
        datasets = _entries(raw, "datasets", PluginRef)
        models = _entries(raw, "models", ModelEntry)
        metrics = _entries(evaluation, "metrics", PluginRef)
        tasks = _entries(evaluation, "tasks", PluginRef)
        executors = _entries({"executor": [raw.get("executor", "local")]}, "executor", PluginRef)

    before = len(problems)
    for i, ref in datasets:
        validate_plugin_params(registry, "dataset", ref, f"datasets[{i}]", problems)
    for i, entry in models:
        path = f"models[{i}]"
        fixed = validate_plugin_params(registry, "model", entry, path, problems)
        if fixed is not None:
            _validate_sweep(registry, entry, path, problems)
    for i, ref in metrics:
        validate_plugin_params(registry, "metric", ref, f"evaluation.metrics[{i}]", problems)
    for i, ref in tasks:
        validate_plugin_params(registry, "task", ref, f"evaluation.tasks[{i}]", problems)
    for _, ref in executors:
        validate_plugin_params(registry, "executor", ref, "executor", problems)
    if config is not None and len(problems) == before:
        from disentbench.core.config.grid import duplicate_run_problems

        problems.extend(duplicate_run_problems(config, registry))
    if problems:
        raise ConfigError(problems)
    return config


def load_study_config(path_or_dict: str | Path | dict[str, Any], registry: PluginRegistry | None = None) -> StudyConfig:
    """Read and fully validate a study config (file path or dict)."""
    if registry is None:
        from disentbench.core.registry import get_plugin_manager

        registry = get_plugin_manager()
    if isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        raw = read_config_file(path_or_dict)
    return validate_study(raw, registry)
