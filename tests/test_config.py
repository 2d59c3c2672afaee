"""Study configs: every bad config exits 2 with a path-naming one-line error, and writes nothing."""

import copy
import json

import pytest
import yaml
from click.testing import CliRunner

from disentbench.core.cli.main import main
from disentbench.core.config.load import load_study_config
from disentbench.core.config.problems import ConfigError

GOOD = {
    "name": "t",
    "datasets": ["dsprites_procedural"],
    "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}}],
    "seeds": 2,
    "training": {"steps": 10},
    "evaluation": {"metrics": ["mig", {"name": "factor_vae_score", "params": {"num_train": 10}}]},
}


def _with(path, value):
    """GOOD with one change at a dotted path (ints index lists); value=... deletes."""
    config = copy.deepcopy(GOOD)
    *parents, last = path
    node = config
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return config


BAD = [
    # (config, expected path in the message, expected words)
    (_with(["models", 0, "sweep", "beta"], [1, 4, "four"]), "models[0].sweep.beta[2]", "valid number"),
    (_with(["models", 0, "sweep", "beta"], [-1]), "models[0].sweep.beta[0]", "greater than or equal"),
    (_with(["models", 0, "name"], "bta_vae"), "models[0].name", "unknown model plugin 'bta_vae'"),
    (_with(["models", 0, "params"], {"betta": 2}), "models[0].params.betta", "Extra inputs"),
    (_with(["models", 0, "sweep"], {"gamma": [1]}), "models[0].sweep.gamma", "no parameter 'gamma'"),
    (_with(["models", 0, "sweep"], {"beta": []}), "models[0].sweep", "no values"),
    (_with(["models", 0, "params"], {"beta": 2}), "models[0]", "both fixed in params and swept"),
    (_with(["datasets", 0], "dsprite"), "datasets[0].name", "unknown dataset plugin"),
    (_with(["seeds"], 0), "seeds", "at least 1"),
    (_with(["seeds"], [1, 1]), "seeds", "must not repeat"),
    (_with(["training", "steps"], 0), "training.steps", "greater than or equal to 1"),
    (_with(["training", "device"], "gpu"), "training.device", "unknown device 'gpu'"),
    (_with(["training", "stpes"], 5), "training.stpes", "Extra inputs"),
    (_with(["evaluation", "metrics", 1, "params"], {"num_train": "many"}), "evaluation.metrics[1].params.num_train", "valid integer"),
    (_with(["evaluation", "metrics", 0], "mgi"), "evaluation.metrics[0].name", "unknown metric plugin 'mgi'"),
    (_with(["evaluation", "representations"], ["median"]), "evaluation.representations[0]", "'mean' or 'sampled'"),
    (_with(["name"], "my study!"), "name", "only letters, digits, '_', '.' and '-'"),
    (_with(["models"], ...), "models", "Field required"),
    (_with(["executor"], "slurmm"), "executor.name", "unknown executor plugin"),
    ({**GOOD, "tracking": {"uri": 5}}, "tracking.uri", "valid string"),
    (_with(["models", 0, "training"], {"steps": 0}), "models[0].training.steps", "greater than or equal to 1"),
    (_with(["models", 0, "training"], {"stpes": 5}), "models[0].training.stpes", "Extra inputs"),
    (_with(["models", 0, "training"], {"learning_rate": 0.1}), "models[0].training.learning_rate", "Extra inputs"),
    (_with(["evaluation", "seed_convention"], "dlib"), "evaluation.seed_convention", "'per_metric', 'study' or 'fixed'"),
    (_with(["training", "triton_tuning"], {"deconv": {"BLOCK_K": 64}}), "training.triton_tuning", "not a kernel kind"),
    (_with(["training", "triton_tuning"], {"conv": {"BLOCK_K": 48}}), "training.triton_tuning", "conv.BLOCK_K=48: tile"),
    (_with(["training", "triton_tuning"], "absent-tuning.json"), "training.triton_tuning", "--write-tuning FILE"),
]


@pytest.mark.parametrize("config,path,words", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_config_names_the_path(registry, config, path, words):
    with pytest.raises(ConfigError) as info:
        load_study_config(config, registry)
    matching = [p for p in info.value.problems if p.startswith(path + ":")]
    assert matching, info.value.problems
    assert any(words in p for p in matching), matching
    assert all("\n" not in p for p in info.value.problems)


def test_good_config_validates(registry):
    config = load_study_config(GOOD, registry)
    assert config.seeds == [0, 1]
    assert config.evaluation.metrics[0].name == "mig"
    assert config.experiment_name == "t"


def test_several_problems_reported_together(registry):
    config = _with(["models", 0, "sweep", "beta"], ["x", "y"])
    config["training"]["steps"] = -1
    with pytest.raises(ConfigError) as info:
        load_study_config(config, registry)
    # structure problems and plugin-param problems are reported in one go
    assert [p.split(":")[0] for p in info.value.problems] == [
        "training.steps", "models[0].sweep.beta[0]", "models[0].sweep.beta[1]"
    ]


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_reads_every_format(tmp_path, registry, suffix):
    path = tmp_path / f"study{suffix}"
    if suffix == ".yaml":
        path.write_text(yaml.safe_dump(GOOD))
    elif suffix == ".json":
        path.write_text(json.dumps(GOOD))
    else:
        path.write_text(
            'name = "t"\ndatasets = ["dsprites_procedural"]\nseeds = 2\n'
            '[[models]]\nname = "beta_vae"\nsweep = { beta = [1, 4] }\n'
            "[training]\nsteps = 10\n"
        )
    config = load_study_config(path, registry)
    assert config.models[0].sweep == {"beta": [1, 4]}


def test_unparsable_and_missing_files(tmp_path, registry):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_study_config(broken, registry)
    with pytest.raises(ConfigError, match="no such config file"):
        load_study_config(tmp_path / "absent.yaml", registry)
    with pytest.raises(ConfigError, match="unknown config format"):
        (tmp_path / "study.ini").write_text("x")
        load_study_config(tmp_path / "study.ini", registry)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_study_config(listy, registry)


@pytest.mark.parametrize("config,path,words", BAD[:12], ids=[b[1] for b in BAD[:12]])
def test_cli_exit_code_2_and_nothing_written(tmp_path, monkeypatch, config, path, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["run", "bad.yaml"])
    assert result.exit_code == 2, result.output
    assert f"error: {path}:" in result.output
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists()


def test_cli_bad_device_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(GOOD))
    result = CliRunner().invoke(main, ["run", "good.yaml", "--device", "tpu", "--dry-run"])
    assert result.exit_code == 2
    assert "--device 'tpu'" in result.output
