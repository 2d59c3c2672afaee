"""Config problems and how they are reported: each is exit 2, one line per problem naming its path, nothing written.

Duplicate grid cells (runs sharing a run key), non-finite numbers, booleans read as
numbers, typos without a suggestion, pydantic wording that does not say what to do,
malformed YAML without file and position, and problems held back until the next try.
"""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from helpers import config_with

from disentbench.core.cli.main import main
from disentbench.core.config.load import load_study_config
from disentbench.core.config.problems import ConfigError

GOOD = {
    "name": "t",
    "datasets": ["dsprites_procedural"],
    "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}}],
    "seeds": 2,
    "training": {"steps": 3, "batch_size": 8, "device": "cpu"},
}


def _with(**changes):
    """GOOD with changes at paths written a__b__0 (list indices as digits)."""
    return config_with(GOOD, **changes)


def _run(work, text: str, name: str = "study.yaml", *extra: str):
    (work / name).write_text(text)
    return CliRunner().invoke(main, ["run", name, "-q", *extra])


def _errors(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def assert_bad(result, work, *words: str) -> list[str]:
    """Exit 2, every error one line, one of them holding all ``words``, and no store or artifacts written."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "--verbose" not in result.output, result.output
    errors = _errors(result)
    assert any(all(w in e for w in words) for e in errors), (words, result.output)
    assert not (work / "mlflow.db").exists()
    assert not (work / "mlruns").exists()
    return errors


def _problems(registry, config) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_study_config(config, registry)
    assert all("\n" not in p for p in info.value.problems)
    return info.value.problems


# =============================================================================
# 1. duplicate grid cells: two entries that expand to the same run key
# =============================================================================

DUPLICATES = {
    "dataset listed twice": (
        _with(datasets=["dsprites_procedural", "dsprites_procedural"]),
        ["datasets[1]: 'dsprites_procedural' is listed twice", "datasets[0]", "remove one"],
    ),
    "dataset twice, once spelled out with default params": (
        _with(datasets=["dsprites_procedural", {"name": "dsprites_procedural", "params": {}}]),
        ["datasets[1]: 'dsprites_procedural' is listed twice"],
    ),
    "swept 1 and 1.0": (
        _with(models__0__sweep={"beta": [1, 1.0]}),
        ["models[0].sweep.beta[1]: 1.0 is the same value as beta[0] (1)", "remove one"],
    ),
    "model entry listed twice": (
        _with(models=[GOOD["models"][0], GOOD["models"][0]]),
        ["models[1]: the same entry as models[0] ('beta_vae'), listed twice; remove one"],
    ),
    "model entries overlapping in one value": (
        _with(models=[GOOD["models"][0], {"name": "beta_vae", "sweep": {"beta": [4.0, 8]}}]),
        ["models[1]: beta_vae beta=4.0 gives the same run as models[0] with beta=4; remove the overlap"],
    ),
    "swept learning rate overridden by training.learning_rate": (
        _with(models__0__sweep={"learning_rate": [1e-4, 1e-3]}, training__learning_rate=1e-3),
        ["models[0].sweep.learning_rate[1]", "training.learning_rate overrides"],
    ),
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_duplicate_runs_rejected(workdir, case):
    config, words = DUPLICATES[case]
    errors = assert_bad(_run(workdir, yaml.safe_dump(config)), workdir, *words)
    assert len(errors) == 1, errors  # one line per duplicated entry, not one per run


def test_duplicate_rejected_in_dry_run_too(workdir):
    result = _run(workdir, yaml.safe_dump(_with(models__0__sweep={"beta": [1, 1.0]})), "study.yaml", "--dry-run")
    assert_bad(result, workdir, "models[0].sweep.beta[1]")
    assert "runs" not in result.output.splitlines()[-1]


def test_distinct_grid_still_valid(registry):
    config = _with(
        datasets=["dsprites_procedural", "dsprites"],
        models=[GOOD["models"][0], {"name": "beta_vae", "sweep": {"beta": [2, 8]}}, {"name": "factor_vae"}],
    )
    assert load_study_config(config, registry).models[1].sweep == {"beta": [2, 8]}


# =============================================================================
# 2. non-finite numbers and booleans read as numbers
# =============================================================================

NUMBERS = {
    "learning rate .inf": ("training: {learning_rate: .inf}", "training.learning_rate: inf is not a finite number"),
    "learning rate string nan": ("training: {learning_rate: nan}", "training.learning_rate: nan is not a finite number"),
    "steps -.inf": ("training: {steps: -.inf}", "training.steps: -inf is not a finite number"),
    "swept .nan": (
        "models: [{name: beta_vae, sweep: {beta: [.nan]}}]", "models[0].sweep.beta[0]: nan is not a finite number"
    ),
    "swept .inf (no upper bound)": (
        "models: [{name: beta_vae, sweep: {beta: [1, .inf]}}]", "models[0].sweep.beta[1]: inf is not a finite number"
    ),
    "model param .inf": ("models: [{name: beta_vae, params: {beta: .inf}}]", "models[0].params.beta: inf is not a finite number"),
    "steps true": ("training: {steps: true}", "training.steps: true is a boolean, not a whole number"),
    "learning rate true": ("training: {learning_rate: true}", "training.learning_rate: true is a boolean"),
    "seed list of booleans": ("seeds: [true, false]", "seeds[0]: true is a boolean"),
    "evaluation seed false": ("evaluation: {seed: false}", "evaluation.seed: false is a boolean"),
    "model param true": ("models: [{name: beta_vae, params: {num_latent: true}}]", "models[0].params.num_latent: true is a boolean"),
    "swept true": (
        "models: [{name: beta_vae, sweep: {num_latent: [true, 4]}}]", "models[0].sweep.num_latent[0]: true is a boolean"
    ),
}


@pytest.mark.parametrize("case", list(NUMBERS))
def test_non_finite_and_boolean_numbers(workdir, case):
    override, words = NUMBERS[case]
    config = {**GOOD, **yaml.safe_load(override)}
    if "training" in yaml.safe_load(override):
        config["training"] = {**GOOD["training"], **config["training"]}
    errors = assert_bad(_run(workdir, yaml.safe_dump(config)), workdir, words)
    assert not any("greater than" in e for e in errors), errors  # NaN is not "below 0"


def test_nan_in_json_and_toml(workdir):
    result = _run(workdir, '{"name": "t", "datasets": ["dsprites_procedural"], "models": ["beta_vae"], '
                  '"training": {"learning_rate": NaN}}', "study.json")
    assert_bad(result, workdir, "training.learning_rate: nan is not a finite number")
    result = _run(workdir, 'name = "t"\ndatasets = ["dsprites_procedural"]\nmodels = ["beta_vae"]\n'
                  "[training]\nlearning_rate = inf\n", "study.toml")
    assert_bad(result, workdir, "training.learning_rate: inf is not a finite number")


# =============================================================================
# 3. messages that name the fix
# =============================================================================


def test_unknown_key_suggests_the_known_one(registry):
    problems = _problems(registry, _with(training__stesp=3))
    assert problems == [p for p in problems if p.startswith("training.stesp:")]
    assert "did you mean 'steps'?" in problems[0] and "known keys: steps, batch_size," in problems[0]

    problems = _problems(registry, _with(models__0__params={"num_latnet": 6}))
    assert problems[0].startswith("models[0].params.num_latnet:")
    assert "did you mean 'num_latent'?" in problems[0] and "known keys: num_latent," in problems[0]

    for config, path, suggestion in [
        ({**GOOD, "modles": []}, "modles", "models"),
        (_with(evaluation={"metrcs": []}), "evaluation.metrcs", "metrics"),
        (_with(executor={"name": "multiprocess", "params": {"wokers": 2}}), "executor.params.wokers", "workers"),
        (_with(models__0__sweep={"bta": [1]}), "models[0].sweep.bta", "beta"),
    ]:
        problems = _problems(registry, config)
        assert problems[0].startswith(path + ":") and f"did you mean {suggestion!r}?" in problems[0], problems


def test_unknown_plugin_suggests_the_known_one(registry):
    problems = _problems(registry, _with(datasets=["dsprite"]))
    assert problems[0].startswith("datasets[0].name: unknown dataset plugin 'dsprite'; did you mean 'dsprites'?")


def test_name_pattern_in_words(workdir):
    errors = assert_bad(_run(workdir, yaml.safe_dump(_with(name="bad name"))), workdir, "error: name:", "'bad name'")
    assert "only letters, digits, '_', '.' and '-'" in errors[0]
    assert "^[A-Za-z0-9" not in errors[0]


@pytest.mark.parametrize("key,words", [("models", "list at least one model"), ("datasets", "list at least one dataset")])
def test_empty_models_or_datasets(workdir, key, words):
    errors = assert_bad(_run(workdir, yaml.safe_dump({**GOOD, key: []})), workdir, f"error: {key}:", words)
    assert "after validation" not in errors[0]


# =============================================================================
# 4. malformed YAML: file, line and column, on one line
# =============================================================================


def test_malformed_yaml_names_file_line_and_column(workdir):
    result = _run(workdir, "name: [unclosed\nfoo: 1\n", "broken.yaml")
    errors = assert_bad(result, workdir, "broken.yaml line 2, column 4:", "expected ',' or ']'", "(check the YAML syntax there)")
    assert len(errors) == 1
    assert "<unicode string>" not in result.output and "^" not in result.output


def test_tab_indented_yaml(workdir):
    result = _run(workdir, "name: x\ntraining:\n\tsteps: 2\n", "tabs.yaml")
    assert_bad(result, workdir, "tabs.yaml line 3, column 1:", "'\\t'", "check the YAML syntax there")
    assert "<unicode string>" not in result.output


# =============================================================================
# 5. every problem at once: structure and plugin level
# =============================================================================


def test_all_problems_listed_at_once(workdir):
    text = (
        'name: "bad name"\n'
        "datasets: [dsprit]\n"
        "models:\n"
        "  - name: beta_vae\n"
        "    sweep: {beta: [1, x]}\n"
        "training: {steps: 0, stesp: 3}\n"
    )
    errors = assert_bad(_run(workdir, text, "many.yaml"), workdir, "error: datasets[0].name: unknown dataset plugin 'dsprit'")
    paths = sorted(e.split(":")[1].strip() for e in errors)
    assert paths == sorted(
        ["name", "datasets[0].name", "models[0].sweep.beta[1]", "training.steps", "training.stesp"]
    ), errors
    assert "5 problem(s) in many.yaml" in _run(workdir, text, "many.yaml").output


def test_plugin_problems_collected_beside_broken_entries(registry):
    config = _with(
        models=[5, {"name": "bta_vae"}, {"name": "beta_vae", "params": {"num_latent": 0}}],
        evaluation={"metrics": ["mgi"], "representations": ["median"]},
        executor="slurmm",
    )
    problems = _problems(registry, config)
    paths = {p.split(":")[0] for p in problems}
    assert {
        "models[0]",
        "evaluation.representations[0]",
        "models[1].name",
        "models[2].params.num_latent",
        "evaluation.metrics[0].name",
        "executor.name",
    } <= paths, problems
