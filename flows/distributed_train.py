"""`seq2seq train` on several processes or hosts with torchrun, selected by one line.

    export SEQ2SEQ_TORCHRUN="--nnodes 2 --nproc-per-node 1 --rdzv-backend c10d \\
        --rdzv-endpoint 10.0.0.10:29500"
    export SEQ2SEQ_RDZV_ID=...   # 32 random hex digits, the same on every node
    seq2seq train            # on every node (or `dvc repro train` on the first)

With ``SEQ2SEQ_TORCHRUN`` set, `seq2seq train` re-launches itself as
``torchrun $SEQ2SEQ_TORCHRUN -m flows.cli train ...``; inside torchrun (``WORLD_SIZE`` is
set) it trains. A multi-node line is checked first (flows/rendezvous.py: a private
rendezvous endpoint, an unguessable run id passed in torchrun's environment, not on its
command line). seq2seq_core.runtime.distributed does the rest (DDP, gloo on CPU, NCCL on CUDA;
rank 0 writes checkpoints and reports).

MLflow: `seq2seq train` logs step and epoch metrics when ``MLFLOW_RUN_ID`` names a run
(MLflow's own variable; the caller opens the run, e.g. a flow or a person), and then only
on rank 0: one writer per metric and step. Without it the train stage stays MLflow-free,
as before (the register stage attaches the history). Every rank reports a digest of its
final weights, and the job fails if the replicas differ.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from flows import rendezvous
from seq2seq_core.runtime import distributed

TORCHRUN_ENV = "SEQ2SEQ_TORCHRUN"


def torchrun_command(params: str, overrides: list[str]) -> list[str] | None:
    """The torchrun command line `seq2seq train` should become, or None (no relaunch:
    ``SEQ2SEQ_TORCHRUN`` unset, or this process already runs under torchrun)."""
    options = os.environ.get(TORCHRUN_ENV, "").strip()
    if not options or "WORLD_SIZE" in os.environ:
        return None
    sets = [arg for value in overrides for arg in ("--set", value)]
    return [
        *(sys.executable, "-m", "torch.distributed.run", *shlex.split(options)),
        *("-m", "flows.cli", "train", "--params", params, *sets),
    ]


def relaunch(params: str, overrides: list[str]) -> int | None:
    """Run `seq2seq train` under torchrun when selected; its exit status, else None. A
    multi-node line that ``rendezvous.launch_env`` refuses exits 2 with its reason."""
    cmd = torchrun_command(params, overrides)
    if cmd is None:
        return None
    options = shlex.split(os.environ.get(TORCHRUN_ENV, ""))
    try:
        extra = rendezvous.launch_env(options, os.environ)
    except rendezvous.RendezvousRefused as refused:
        print(f"seq2seq train: torchrun refused: {refused}", file=sys.stderr, flush=True)
        return 2
    print(f"seq2seq train: torchrun {shlex.join(cmd[3:])}", file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=False, env={**os.environ, **extra}).returncode


class ReplicaReport:
    """A ``TrainCallback``: at the end, every rank prints the digest of its weights after
    checking that all ranks agree (``ReplicasDivergedError`` otherwise)."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_train_end(self, model: Any) -> None:
        topo = distributed.topology()
        digests = distributed.replica_digests(model, topo)
        print(
            f"seq2seq train: rank {topo.rank} of {topo.world}: replicas agree, "
            f"weights sha256 {digests[topo.rank]}",
            file=sys.stderr,
            flush=True,
        )


def train_callbacks() -> list[Any]:
    """Callbacks for `seq2seq train`: the replica check under torchrun, MLflow metrics on
    rank 0 when ``MLFLOW_RUN_ID`` is set."""
    callbacks: list[Any] = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        callbacks.append(ReplicaReport())
    run_id = os.environ.get("MLFLOW_RUN_ID", "").strip()
    if run_id and int(os.environ.get("RANK", "0")) == 0:
        from flows import tracking

        tracking.configure_tracking(Path.cwd())
        callbacks.append(tracking.MlflowTrainCallback(run_id))
    return callbacks


def close_callbacks(callbacks: list[Any]) -> None:
    """After training: the MLflow callback sends its buffered metrics (waiting, bounded,
    for a tracking server that is down)."""
    tracking = sys.modules.get("flows.tracking")  # not imported: no MLflow callback made
    if tracking is None:
        return
    for callback in callbacks:
        if isinstance(callback, tracking.MlflowTrainCallback):
            callback.close()
