"""Grid expansion and run keys: stable across processes, distinct across configs."""

import subprocess
import sys

from click.testing import CliRunner

from disentbench.core.cli.main import main
from disentbench.core.config.grid import expand_grid
from disentbench.core.config.load import load_study_config

STUDY = {
    "name": "grid",
    "datasets": ["dsprites_procedural"],
    "models": [{"name": "beta_vae", "sweep": {"beta": [1, 2, 4]}, "params": {"num_latent": 6}}],
    "seeds": [0, 7],
    "training": {"steps": 100},
}


def _specs(registry, **changes):
    return expand_grid(load_study_config({**STUDY, **changes}, registry), registry)


def test_grid_size_order_and_resolved_params(registry):
    specs = _specs(registry)
    assert len(specs) == 3 * 2
    assert [(s.model_params["beta"], s.seed) for s in specs] == [
        (1.0, 0), (1.0, 7), (2.0, 0), (2.0, 7), (4.0, 0), (4.0, 7)
    ]
    assert [s.index for s in specs] == list(range(6))
    # defaults are resolved into the spec (and hence into the key)
    assert specs[0].model_params["num_latent"] == 6
    assert specs[0].model_params["learning_rate"] == 1e-4
    assert specs[0].run_name == "beta_vae beta=1 dsprites_procedural s=0"


def test_run_keys_distinct_and_stable(registry):
    keys = [s.run_key for s in _specs(registry)]
    assert len(set(keys)) == len(keys)
    assert keys == [s.run_key for s in _specs(registry)]
    # 4 and 4.0 are the same config
    assert _specs(registry, models=[{"name": "beta_vae", "sweep": {"beta": [4]}, "params": {"num_latent": 6}}])[0].run_key == keys[4]


def test_run_key_changes_with_what_is_trained(registry):
    base = _specs(registry)[0].run_key
    assert _specs(registry, training={"steps": 101})[0].run_key != base
    assert _specs(registry, training={"steps": 100, "batch_size": 32})[0].run_key != base
    assert _specs(registry, training={"steps": 100, "learning_rate": 1e-3})[0].run_key != base
    # but not with the device or logging cadence
    assert _specs(registry, training={"steps": 100, "device": "cpu", "log_every": 7})[0].run_key == base


def test_run_key_same_in_another_process(registry):
    code = (
        "import sys; sys._called_from_test = True\n"
        "from disentbench.core.registry import build_registry\n"
        "from disentbench.core.config.load import load_study_config\n"
        "from disentbench.core.config.grid import expand_grid\n"
        f"r = build_registry(load_entry_points=False); print(expand_grid(load_study_config({STUDY!r}, r), r)[3].run_key)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**__import__("os").environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == _specs(registry)[3].run_key


def test_dry_run_prints_table_and_count(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(STUDY))
    result = CliRunner().invoke(main, ["run", "s.yaml", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("6 runs")
    assert "beta=4.0" in result.output
    assert not (tmp_path / "mlflow.db").exists()
