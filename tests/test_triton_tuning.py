"""Triton launch settings as data: their JSON form, tuning files, ``training.triton_tuning`` and its way to the
packed trainer. Nothing here imports Triton (the kernels under a tuning: tests/test_packed_triton.py)."""

import json
import sys

import pytest
import yaml
from click.testing import CliRunner

from disentbench.core.cli.main import main
from disentbench.core.config.load import load_study_config
from disentbench.core.training.kernels.tuning import read_tuning_file, tuning_from_json, tuning_to_json
from disentbench.core.training.packed.trainer import SpeedOptions

SWEPT = {"conv_transpose": {"BLOCK_K": 64, "num_warps": 8}, "conv_transpose[32,1,4,2]": {"WINDOW": 1}}


def test_json_form_round_trips_with_shape_keys():
    tuning = tuning_from_json(SWEPT)
    assert tuning == {"conv_transpose": {"BLOCK_K": 64, "num_warps": 8}, ("conv_transpose", 32, 1, 4, 2): {"WINDOW": 1}}
    assert tuning_to_json(tuning) == SWEPT


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"conv": {"BLOCK_M": 96}}, "conv.BLOCK_M=96: tile sizes are powers of two, at least 16"),
        ({"wgrad": {"ROWS": 8}}, "wgrad.ROWS=8: tile sizes are powers of two"),
        ({"conv": {"num_warps": 3}}, "conv.num_warps=3: warps are 1, 2, 4, 8, 16 or 32"),
        ({"conv": {"num_stages": 0}}, "conv.num_stages=0: at least 1 stage"),
        ({"conv_transpose": {"WINDOW": 2}}, "conv_transpose.WINDOW=2: a switch, 0 or 1"),
        ({"conv": {"BLOCK_K": True}}, "conv.BLOCK_K=True: settings are integers"),
        ({"conv_transpose[32,1,4]": {"WINDOW": 1}}, "not a kernel kind"),
        (["conv"], "expected a JSON object of kernel kinds; got list"),
    ],
)
def test_bad_settings_are_named(entry, words):
    with pytest.raises(ValueError) as info:
        tuning_from_json(entry)
    assert words in str(info.value)


def test_tuning_files(tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps(SWEPT))
    assert read_tuning_file(path) == SWEPT
    path.write_text("{conv: 1")
    with pytest.raises(ValueError, match="is not a readable JSON file"):
        read_tuning_file(path)
    with pytest.raises(ValueError, match=r"does not exist \(benchmarks/packed_layers.py --sweep"):
        read_tuning_file(tmp_path / "absent.json")


def test_config_reads_a_tuning_file_into_the_config_and_passes_it_to_the_trainer(tmp_path, monkeypatch, registry):
    """A path is read when the config loads, so the recorded config holds the settings themselves; inline
    settings are accepted too; the study hands them (and overlap_sampling) to SpeedOptions."""
    from disentbench.core.study.packing import speed_options as _speed_options

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tuning.json").write_text(json.dumps(SWEPT))
    raw = {"name": "t", "datasets": ["dsprites_procedural"], "models": ["beta_vae"]}
    config = load_study_config({**raw, "training": {"triton_tuning": "tuning.json", "overlap_sampling": True}}, registry)
    assert config.training.triton_tuning == SWEPT
    assert config.model_dump(mode="json")["training"]["triton_tuning"] == SWEPT
    speed = _speed_options(config)
    assert speed.triton_tuning == SWEPT and speed.overlap_sampling
    inline = load_study_config({**raw, "training": {"triton_tuning": {"wgrad": {"BLOCK_K": 128}}}}, registry)
    assert _speed_options(inline).triton_tuning == {"wgrad": {"BLOCK_K": 128}}
    default = load_study_config(raw, registry)
    assert _speed_options(default).triton_tuning is None and not _speed_options(default).overlap_sampling


def test_run_with_a_bad_tuning_file_exits_2_naming_the_field_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tuning.json").write_text(json.dumps({"conv": {"BLOCK_K": 100}}))
    raw = {"name": "t", "datasets": ["dsprites_procedural"], "models": ["beta_vae"], "training": {"triton_tuning": "tuning.json"}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["run", "study.yaml"])
    assert result.exit_code == 2, result.output
    assert "training.triton_tuning: conv.BLOCK_K=100: tile sizes are powers of two" in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_speed_options_check_their_tuning_and_keep_it_off_cuda():
    with pytest.raises(ValueError, match="triton_tuning: 'deconv' is not a kernel kind"):
        SpeedOptions(triton_tuning={"deconv": {}})
    speed = SpeedOptions(formulation="triton", triton_tuning=SWEPT, overlap_sampling=True).on("cpu")
    assert speed.triton_tuning == SWEPT and not speed.overlap_sampling  # a formulation setting, kept on every device
    hash(speed)  # still usable as a key


def test_reading_a_tuning_does_not_import_triton():
    """Config validation must work where Triton is absent (the module only re-exports into packed_triton)."""
    import subprocess

    code = (
        "import sys; from disentbench.core.training.kernels.tuning import tuning_from_json; tuning_from_json({'conv': {}}); "
        "print('triton' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
