"""Checkpoint averaging: the mean of checkpoints (exact numbers), the refusal of misfits,
`seq2seq average`, and averaging in training: snapshots of the budget's final quarter, the
kept checkpoint in reports/train.json, and snapshots that survive a kill."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from flows.cli import main
from seq2seq_core import stages
from seq2seq_core.config import ModelConfig, load_config
from seq2seq_core.model.checkpoint import load_model, model_payload, save_checkpoint
from seq2seq_core.model.seq2seq import build_model
from seq2seq_core.training.averaging import AveragingError, average_checkpoints
from tests.support import Recorder, StopAt, run_training, train_cfg

TINY = ModelConfig(emb_size=8, hidden_size=16, dropout=0.0, tie_embeddings="none")


def _checkpoint(path: Path, fill: float | None = None, cfg: ModelConfig = TINY) -> Path:
    """A tiny model's checkpoint: random weights, or every float parameter ``fill``, plus
    the first parameter's i-th element i x fill (to see elements are not mixed up)."""
    torch.manual_seed(0)
    model = build_model(cfg, 30, 30)
    if fill is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(fill)
            first = next(model.parameters())
            first.copy_(torch.arange(first.numel(), dtype=first.dtype).view_as(first) * fill)
    save_checkpoint(path, model_payload(model, cfg, 30, 30, "sha"))
    return path


def test_averaging_identical_checkpoints_gives_the_same_weights(tmp_path: Path) -> None:
    one = _checkpoint(tmp_path / "a.pt")
    copies = [shutil.copy(one, tmp_path / f"{i}.pt") for i in range(3)]
    averaged = average_checkpoints([Path(p) for p in copies])
    original = torch.load(one, weights_only=True)["model_state"]
    assert averaged["model_state"].keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(averaged["model_state"][name], tensor), name
    assert averaged["averaged_from"] == [str(p) for p in copies]


def test_averaging_two_checkpoints_gives_their_mean(tmp_path: Path) -> None:
    a, b = _checkpoint(tmp_path / "a.pt", 1.0), _checkpoint(tmp_path / "b.pt", 4.0)
    state = average_checkpoints([a, b])["model_state"]
    name, first = next(iter(state.items()))
    assert first.dtype == torch.float32
    assert first.flatten()[:4].tolist() == [0.0, 2.5, 5.0, 7.5]  # i x (1 + 4) / 2
    assert all(torch.all(t == 2.5) for n, t in state.items() if n != name)


def test_averaging_refuses_another_architecture_naming_the_file(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a.pt")
    wide = _checkpoint(tmp_path / "wide.pt", cfg=dataclasses.replace(TINY, hidden_size=32))
    with pytest.raises(AveragingError, match=r"wide\.pt: cannot average with .*a\.pt.*"
                       r"model\.hidden_size 32 \(vs 16\)"):  # fmt: skip
        average_checkpoints([a, wide])


def test_cli_average_writes_a_loadable_mean_and_names_a_misfit(tmp_path: Path, capsys) -> None:
    a, b = _checkpoint(tmp_path / "a.pt", 1.0), _checkpoint(tmp_path / "b.pt", 3.0)
    out = tmp_path / "avg" / "mean.pt"
    assert main(["average", str(a), str(b), "--out", str(out)]) == 0
    model, meta = load_model(out)
    assert meta["averaged_from"] == [str(a), str(b)]
    assert torch.all(model.decoder.output_layer.bias == 2.0)
    wide = _checkpoint(tmp_path / "wide.pt", cfg=dataclasses.replace(TINY, emb_size=16))
    capsys.readouterr()
    assert main(["average", str(a), str(wide), "--out", str(tmp_path / "x.pt")]) == 1
    assert f"{wide}: cannot average with {a}: it has model.emb_size 16" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def _snapshot_steps(directory: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[-1]) for p in directory.glob("avg-snapshot-*.pt"))


def test_snapshots_of_the_final_quarter_survive_a_kill(tmp_path: Path) -> None:
    """16 steps (4 epochs of 4): snapshots with each last.pt from step 12 on, the newest
    three kept. A kill and a rerun average the same three as an uninterrupted run; a
    snapshot of a step after last.pt (the rerun trains it again) is not averaged."""
    cfg = train_cfg({"dropout": 0.3}, max_epochs=4, checkpoint_every_steps=2, average_checkpoints=3,
               log_every_steps=1)  # fmt: skip
    whole = run_training(cfg, tmp_path / "whole", callbacks=[Recorder()])
    assert _snapshot_steps(tmp_path / "whole") == [12, 14, 16]
    assert whole.averaging["snapshots"] == 3
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "cut", callbacks=[StopAt(15)])
    assert _snapshot_steps(tmp_path / "cut") == [12, 14]
    stale = tmp_path / "cut" / "avg-snapshot-15.pt"
    shutil.copy(tmp_path / "cut" / "avg-snapshot-14.pt", stale)
    resumed = run_training(cfg, tmp_path / "cut")
    assert _snapshot_steps(tmp_path / "cut") == [12, 14, 16]
    assert resumed.averaging == whole.averaging and resumed.kept_checkpoint == whole.kept_checkpoint
    a = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "cut" / "best.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_averaging_in_training_keeps_the_better_and_records_it(tiny_params_file: Path) -> None:
    cfg = load_config(
        tiny_params_file,
        ["train.max_epochs=4", "train.average_checkpoints=3", "train.checkpoint_every_steps=1",
         "train.lr=0.01"],
    )  # fmt: skip
    stages.ingest(cfg)
    stages.build_vocab(cfg)
    result = stages.train(cfg)
    report = json.loads((Path(cfg.evaluate.reports_dir) / "train.json").read_text())
    choice = report["averaging"]
    assert report["kept_checkpoint"] == result.kept_checkpoint == choice["kept_checkpoint"]
    assert choice["average_checkpoints"] == 3 and choice["snapshots"] == 3
    assert choice["single_valid_bleu"] == result.best_valid_bleu
    averaged_better = choice["averaged_valid_bleu"] >= choice["single_valid_bleu"]
    assert choice["kept_checkpoint"] == ("averaged" if averaged_better else "single")
    best = torch.load(result.best_checkpoint, weights_only=True)
    snapshots = sorted(Path(cfg.train.checkpoint_dir).glob("avg-snapshot-*.pt"))
    mean = average_checkpoints(snapshots)["model_state"]
    is_mean = all(torch.equal(best["model_state"][k], mean[k]) for k in mean)
    assert is_mean == (choice["kept_checkpoint"] == "averaged")
    if is_mean:
        assert best["valid"]["valid_bleu"] == choice["averaged_valid_bleu"]


def test_averaging_off_keeps_the_single_checkpoint_and_writes_no_snapshots(
    tmp_path: Path,
) -> None:
    result = run_training(train_cfg(checkpoint_every_steps=1, average_checkpoints=1), tmp_path)
    assert result.kept_checkpoint == "single" and result.averaging is None
    assert _snapshot_steps(tmp_path) == []


def test_the_choice_travels_as_checked_json() -> None:
    """Rank 0 broadcasts its ``CheckpointChoice`` as JSON; other ranks rebuild it only from
    an object with exactly its fields and types."""
    from seq2seq_core.runtime.distributed import MessageError, decode_json, encode_json
    from seq2seq_core.training.averaging import CheckpointChoice, choice_from_json

    choice = CheckpointChoice("averaged", 3, 2, 14.25, 13.5)
    wire = decode_json(encode_json(dataclasses.asdict(choice)))
    assert choice_from_json(wire) == choice and choice_from_json(None) is None
    assert choice_from_json({**wire, "averaged_valid_bleu": None}).averaged_valid_bleu is None
    for bad in (
        [1],
        {**wire, "extra": 1},
        {k: v for k, v in wire.items() if k != "snapshots"},
        {**wire, "kept_checkpoint": "os.system"},
        {**wire, "snapshots": 2.5},
        {**wire, "average_checkpoints": True},
        {**wire, "single_valid_bleu": "13.5"},
    ):
        with pytest.raises(MessageError, match="checkpoint choice"):
            choice_from_json(bad)
