"""`seq2seq train` under torchrun: the one-line switch, the callbacks each rank gets, and
the replica digest (two real ranks run in tests/test_scale_out.py and
tests/test_training_engine.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows import distributed_train
from flows.distributed_train import ReplicaReport, torchrun_command, train_callbacks

OPTIONS = "--nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint h0:29500"


@pytest.fixture
def no_launch_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in ("SEQ2SEQ_TORCHRUN", "WORLD_SIZE", "RANK", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_torchrun_is_selected_by_one_variable_and_never_nests(no_launch_env) -> None:
    assert torchrun_command("params.yaml", ["train.lr=0.1"]) is None
    no_launch_env.setenv("SEQ2SEQ_TORCHRUN", OPTIONS)
    cmd = torchrun_command("p.yaml", ["train.lr=0.1", "train.threads=1"])
    assert cmd is not None
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    n = len(OPTIONS.split())
    assert cmd[3 : 3 + n] == OPTIONS.split()
    assert cmd[3 + n :] == [
        "-m", "flows.cli", "train", "--params", "p.yaml",
        "--set", "train.lr=0.1", "--set", "train.threads=1",
    ]  # fmt: skip
    no_launch_env.setenv("WORLD_SIZE", "2")  # inside torchrun: train, do not relaunch
    assert torchrun_command("p.yaml", []) is None
    assert distributed_train.relaunch("p.yaml", []) is None


def test_only_rank_zero_logs_to_mlflow(
    no_launch_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.tracking import MlflowTrainCallback

    monkeypatch.chdir(tmp_path)
    assert train_callbacks() == []  # a plain `seq2seq train` stays MLflow-free
    no_launch_env.setenv("WORLD_SIZE", "2")
    no_launch_env.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    no_launch_env.setenv("RANK", "1")
    assert [type(c) for c in train_callbacks()] == [ReplicaReport]
    no_launch_env.setenv("RANK", "0")
    assert [type(c) for c in train_callbacks()] == [ReplicaReport, MlflowTrainCallback]


def test_a_refused_multi_node_line_exits_2_before_torchrun_starts(
    no_launch_env, capsys: pytest.CaptureFixture[str]
) -> None:
    no_launch_env.setenv("SEQ2SEQ_TORCHRUN", OPTIONS.replace("h0", "8.8.8.8"))
    no_launch_env.setenv("SEQ2SEQ_RDZV_ID", "3f9c2a7be01d48c6a5f7e2b9d4c81a06")
    assert distributed_train.relaunch("p.yaml", []) == 2
    err = capsys.readouterr().err
    assert err.startswith("seq2seq train: torchrun refused: --rdzv-endpoint 8.8.8.8 resolves")
    assert "3f9c2a7be01d48c6a5f7e2b9d4c81a06" not in err
    no_launch_env.delenv("SEQ2SEQ_RDZV_ID")
    assert distributed_train.relaunch("p.yaml", []) == 2
    assert "SEQ2SEQ_RDZV_ID must be 32+ random hex digits" in capsys.readouterr().err
