"""Warm start through the stages, on the Genesis fixture: real training, no mocks.

One source model is trained once for the module (6 epochs); each test starts a new
workspace that shares its prepared data and warm-starts from (a copy of) its checkpoints.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from seq2seq_core import stages
from seq2seq_core.config import PipelineConfig, config_from_dict
from seq2seq_core.training.warm_start import (
    WarmStartError,
    WarmStartSource,
    local_source,
    vocab_sha256,
)
from tests.support import tiny_params


def _config(base: Path, prepared: Path | None = None, **sections: dict) -> PipelineConfig:
    params = tiny_params()
    params["data"]["prepared_dir"] = str(prepared or base / "prepared")
    params["vocab"]["out_dir"] = str(base / "vocab")
    params["train"].update(checkpoint_dir=str(base / "ckpt"), threads=1, max_epochs=1)
    params["evaluate"]["reports_dir"] = str(base / "reports")
    for section, values in sections.items():
        params[section].update(values)
    return config_from_dict(params)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained model's checkpoint directory, with its vocabulary in ``vocab/``."""
    base = tmp_path_factory.mktemp("source")
    cfg = _config(base, train={"max_epochs": 6})
    stages.ingest(cfg)
    stages.build_vocab(cfg)
    stages.train(cfg)
    shutil.copytree(base / "vocab", base / "ckpt" / "vocab")
    return base


def _workspace(tmp_path: Path, source: Path, **sections: dict) -> PipelineConfig:
    return _config(tmp_path, prepared=source / "prepared", **sections)


def _warm(cfg: PipelineConfig) -> WarmStartSource | None:
    """What the CLI and the pipeline pass the stages for ``train.init_from``."""
    return local_source(cfg.train.init_from, cfg.train.reset_optimizer)


def _first_valid_loss(cfg: PipelineConfig) -> float:
    return stages.train(cfg, warm_start=_warm(cfg)).history[0]["valid_loss"]


def test_local_source_resolves_directories_and_refuses_registry_references(
    source: Path, tmp_path: Path
) -> None:
    ckpt = source / "ckpt"
    assert local_source("none", reset_optimizer=True) is None
    best = local_source(str(ckpt), reset_optimizer=True)
    assert best == WarmStartSource(ckpt / "best.pt", ckpt / "vocab", str(ckpt / "best.pt"))
    last = local_source(str(ckpt), reset_optimizer=False)
    assert last is not None and last.checkpoint == ckpt / "last.pt"
    for reference in ("champion", "models:/seq2seq-translator@champion"):
        with pytest.raises(WarmStartError, match=r"registry reference.*resolves it"):
            local_source(reference, reset_optimizer=True)
    with pytest.raises(WarmStartError, match="not a checkpoint directory"):
        local_source(str(tmp_path / "nowhere"), reset_optimizer=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WarmStartError, match=r"empty/best\.pt does not exist"):
        local_source(str(tmp_path / "empty"), reset_optimizer=True)


def test_vocab_stage_copies_the_source_vocabulary(source: Path, tmp_path: Path, caplog) -> None:
    cfg = _workspace(tmp_path, source, train={"init_from": str(source / "ckpt")})
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        result = stages.build_vocab(cfg, warm_start=_warm(cfg))
    for path in (source / "vocab").iterdir():
        if path.name != "coverage.json":
            assert (tmp_path / "vocab" / path.name).read_bytes() == path.read_bytes()
    assert vocab_sha256(tmp_path / "vocab") == vocab_sha256(source / "vocab")
    assert (tmp_path / "vocab" / "coverage.json").is_file() and result.coverage
    assert f"vocabulary reused from {source / 'ckpt' / 'best.pt'}" in caplog.text


def test_warm_start_beats_scratch_and_a_resumable_run_wins_over_it(
    source: Path, tmp_path: Path, caplog
) -> None:
    init = {"init_from": str(source / "ckpt")}
    cfg = _workspace(tmp_path, source, train=init)
    stages.build_vocab(cfg, warm_start=_warm(cfg))
    scratch = _workspace(tmp_path, source)  # same workspace: its last.pt is not resumed
    scratch_loss = _first_valid_loss(scratch)
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        warm_loss = _first_valid_loss(cfg)
    assert "written by another run" in caplog.text  # the scratch run's last.pt
    assert f"warm start from {source / 'ckpt' / 'best.pt'}" in caplog.text
    assert "a fresh optimizer and LR schedule (train.reset_optimizer)" in caplog.text
    source_history = json.loads((source / "ckpt" / "history.json").read_text())
    source_losses = [h["valid_loss"] for h in source_history]
    assert warm_loss < scratch_loss - 0.5 and warm_loss < source_losses[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        again_cfg = _workspace(tmp_path, source, train={**init, "max_epochs": 2})
        again = stages.train(again_cfg, warm_start=_warm(again_cfg))
    assert "not warm-starting from" in caplog.text and "resuming this run's own" in caplog.text
    assert again.epochs == 2 and again.history[0]["valid_loss"] == warm_loss


def test_keeping_the_optimizer_continues_adams_steps(source: Path, tmp_path: Path, caplog) -> None:
    source_last = torch.load(source / "ckpt" / "last.pt", weights_only=True)
    source_step = source_last["progress"]["step"]
    cfg = _workspace(
        tmp_path, source, train={"init_from": str(source / "ckpt"), "reset_optimizer": False}
    )
    stages.build_vocab(cfg, warm_start=_warm(cfg))
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        result = stages.train(cfg, warm_start=_warm(cfg))
    assert f"continuing at step {source_step}" in caplog.text
    assert result.steps > source_step
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    adam_steps = {float(s["step"]) for s in last["optimizer_state"]["state"].values()}
    assert adam_steps == {float(result.steps)}  # Adam's own count went on from the source's


def test_another_architecture_is_refused_naming_both(source: Path, tmp_path: Path) -> None:
    cfg = _workspace(
        tmp_path, source, model={"hidden_size": 64}, train={"init_from": str(source / "ckpt")}
    )
    stages.build_vocab(cfg, warm_start=_warm(cfg))
    with pytest.raises(WarmStartError) as error:
        stages.train(cfg, warm_start=_warm(cfg))
    assert str(error.value) == (
        f"cannot warm-start from {source / 'ckpt' / 'best.pt'}: its model has "
        "model.hidden_size 32, params.yaml has 64"
    )


@pytest.mark.parametrize(
    ("vocab", "sizes"),
    [({"size": 150}, "150/150"), ({"model_type": "bpe"}, "200/200")],
    ids=["smaller", "same-size-other-pieces"],
)
def test_another_vocabulary_is_refused_naming_both(
    source: Path, tmp_path: Path, vocab: dict, sizes: str
) -> None:
    stages.build_vocab(_workspace(tmp_path, source, vocab=vocab))  # no warm start
    copy = tmp_path / "src"  # the source without its vocab/: only the checkpoint's hash
    shutil.copytree(source / "ckpt", copy, ignore=shutil.ignore_patterns("vocab"))
    cfg = _workspace(tmp_path, source, vocab=vocab, train={"init_from": str(copy)})
    with pytest.raises(WarmStartError) as error:
        stages.train(cfg, warm_start=_warm(cfg))
    ours, theirs = vocab_sha256(tmp_path / "vocab")[:8], vocab_sha256(source / "vocab")[:8]
    assert ours != theirs
    assert str(error.value) == (
        f"cannot warm-start from {copy / 'best.pt'}: its vocabulary (sha {theirs}, 200/200) "
        f"is not {tmp_path / 'vocab'} (sha {ours}, {sizes})"
    )
