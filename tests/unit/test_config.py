from pathlib import Path

import pytest
import yaml

from seq2seq_core.config import ConfigError, PipelineConfig, config_from_dict, load_config
from tests.support import REPO


def test_repo_params_load_and_match_dataclass_defaults() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert cfg == PipelineConfig(), "params.yaml and the dataclass defaults drifted apart"
    assert cfg.data.source == "bible:e-4"
    assert cfg.register.model_name == "seq2seq-translator"


def test_seed_config_is_the_plain_lstm_seq2seq() -> None:
    cfg = load_config(REPO / "configs" / "seed.yaml")
    assert (cfg.model.cell, cfg.model.attention, cfg.model.context) == ("lstm", "none", "last")
    assert cfg.model.bidirectional is False
    assert cfg.train.teacher_forcing == 0.5
    assert cfg.decode.beam_size == 1


def test_overrides_are_parsed_as_yaml_values() -> None:
    cfg = config_from_dict(
        {}, ["train.max_epochs=3", "model.bidirectional=false", "data.valid_source=null"]
    )
    assert cfg.train.max_epochs == 3
    assert cfg.model.bidirectional is False
    assert cfg.data.valid_source is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model": {"cel": "gru"}}, "model: unknown key(s) cel; valid keys:"),
        ({"model": {"cell": "transformer"}}, "model.cell: 'transformer' is not one of lstm, gru"),
        ({"train": {"max_epochs": "ten"}}, "train.max_epochs must be an integer"),
        ({"modle": {}}, "unknown section(s) modle"),
        ({"train": {"teacher_forcing": 1.5}}, "train.teacher_forcing must be in [0, 1]"),
        ({"serve": {"max_sentences_per_request": 0}}, "serve.max_sentences_per_request must"),
        ({"serve": {"max_request_bytes": -1}}, "serve.max_request_bytes must be > 0"),
        ({"serve": {"body_timeout_s": 0}}, "serve.body_timeout_s must be > 0"),
        ({"serve": {"request_timeout_s": 0.0}}, "serve.request_timeout_s must be > 0"),
    ],
)
def test_bad_parameters_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(raw)
    assert message in str(excinfo.value)


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"vocab": {"size": -1}}))
    with pytest.raises(ConfigError, match=r"p\.yaml: vocab\.size must be > 0"):
        load_config(path)
    with pytest.raises(ConfigError, match="parameter file not found"):
        load_config(tmp_path / "missing.yaml")


def test_flat_keys_are_section_dot_key() -> None:
    flat = PipelineConfig().flat()
    assert flat["train.teacher_forcing"] == 1.0
    assert flat["model.attention"] == "luong"
