"""Helpers shared by the test files: paths, tiny corpora and configs, the character-level
training harness, callbacks, the host-sync counter and the two-rank gloo launcher.

Fixtures live in conftest.py; everything a test file imports from elsewhere lives here.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.overrides import TorchFunctionMode

from seq2seq_core.config import DataConfig, ModelConfig, PipelineConfig, TrainConfig
from seq2seq_core.data.prepare import DataError, prepare_corpus, read_pairs
from seq2seq_core.model.checkpoint import CheckpointDir
from seq2seq_core.model.seq2seq import build_model
from seq2seq_core.special_tokens import EOS_ID
from seq2seq_core.training.loop import TrainResult, train_model

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
GENESIS_TSV = FIXTURES / "genesis_de_en.tsv"

# --------------------------------------------------------------------------- random models

# Every decoder variant, tiny: cell x attention x input feeding (which needs attention).
DECODER_VARIANTS = [
    ModelConfig(
        cell=c,
        attention=a,
        input_feeding=f,
        emb_size=8,
        hidden_size=16,
        dropout=0.0,
        tie_embeddings="none",
    )
    for c, a, f in itertools.product(("gru", "lstm"), ("none", "bahdanau", "luong"), (0, 1))
    if not (f and a == "none")
]


def variant_id(cfg: ModelConfig) -> str:
    return f"{cfg.cell}-{cfg.attention}{'-feed' if cfg.input_feeding else ''}"


def random_sources(n: int = 11) -> list[list[int]]:
    """n sources of 1-11 ids from a 30-word vocabulary, the same every call."""
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(1, 12, (n,), generator=g).tolist()
    return [torch.randint(4, 30, (k,), generator=g).tolist() for k in lens]


def random_model(cfg: ModelConfig, eos_bias: float = 0.5) -> torch.nn.Module:
    """An untrained 30-word model in eval mode, biased towards EOS by ``eos_bias`` so that
    some sentences stop early and others run to the length limit."""
    torch.manual_seed(0)
    model = build_model(cfg, 30, 30)
    with torch.no_grad():
        model.decoder.output_layer.bias[EOS_ID] += eos_bias
    return model.eval()


# --------------------------------------------------------------------------- tiny configs

# The training defaults before issue 17 (configs/baseline.yaml keeps them for the pipeline):
# a constant LR and no label smoothing. The tests train a few dozen steps, where a 100-step
# warmup would keep the LR near zero and a budget decay would end it with the run; they pin
# losses and learning of the engine, and the budget schedules' own tests opt in to those.
CONSTANT_LR_TRAIN = {
    "lr_schedule": "constant", "warmup_steps": 0, "min_lr": 1.0e-5, "label_smoothing": 0.0,
}  # fmt: skip

# One torch thread in every test training: threads=0 means "the idle cores", which varies
# with the machine's load, and two trainings compared bit for bit must run the same maths.
PINNED_THREADS = {"threads": 1}


def tiny_params(source: Path = GENESIS_TSV) -> dict:
    """Parameters that run every stage in seconds: 208 verse pairs, a 32-unit GRU.

    Every section is present (defaults filled in) because DVC tracks whole sections.
    """
    full = PipelineConfig().to_dict()
    tiny = {
        "data": {"source": str(source), "valid_fraction": 0.1, "test_fraction": 0.1},
        "vocab": {"size": 200},
        "model": {
            "cell": "gru",
            "attention": "bahdanau",
            "emb_size": 16,
            "hidden_size": 32,
            "tie_embeddings": "none",
        },
        "train": {
            **CONSTANT_LR_TRAIN,
            **PINNED_THREADS,
            "lr": 0.002,
            "max_epochs": 2,
            "time_budget_min": 2.0,
            "batch_tokens": 1200,
            "valid_bleu_sentences": 20,
        },
        "decode": {"max_len_extra": 5, "max_len_ratio": 1.0},
        "evaluate": {"samples": 5},
    }
    for section, values in tiny.items():
        full[section].update(values)
    return full


# --------------------------------------------------------------------------- char training

PAIRS = [
    # Four words or more, so that sentence BLEU can reach 100.
    ("das ist das haus", "this is the house"),
    ("der hund ist hier", "the dog is here"),
    ("ein kind ist da", "a child is there"),
    ("die frau sagt ja", "the woman says yes"),
    ("im anfang war gott", "in the beginning was god"),
    ("gott sprach es werde licht", "god said let there be light"),
]


class CharTokenizer:
    """Tiny stand-in for SubwordTokenizer: one id per character, 0-3 reserved."""

    alphabet = "abcdefghijklmnopqrstuvwxyz "
    src_vocab_size = tgt_vocab_size = 4 + len(alphabet)

    def encode_src(self, texts: list[str]) -> list[list[int]]:
        return [[4 + self.alphabet.index(c) for c in t] for t in texts]

    encode_tgt = encode_src

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return ["".join(self.alphabet[i - 4] for i in seq if i >= 4) for seq in ids]


class Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[int, dict]] = []
        self.epochs: list[tuple[int, dict]] = []

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps.append((step, metrics))

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs.append((epoch, metrics))


class StopAt(Recorder):
    """Records steps and raises after `step` (a stand-in for Ctrl-C / a killed job)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.stop = step

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        super().on_step(step, metrics)
        if step == self.stop:
            raise KeyboardInterrupt


class FakeClock:
    """The time budget's clock, advanced by the test (10 s per optimizer step)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Ticker(Recorder):
    def __init__(self, clock: FakeClock, seconds_per_step: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds_per_step

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        super().on_step(step, metrics)
        self.clock.now += self.seconds


def train_cfg(model: dict | None = None, **train: object) -> PipelineConfig:
    """A character-level config for PAIRS: 16/32 units, 40-token batches, two epochs."""
    untied = {"tie_embeddings": "none"}
    m = {"emb_size": 16, "hidden_size": 32, "dropout": 0.0, **untied, **(model or {})}
    t = {"lr": 0.01, "batch_tokens": 40, "max_epochs": 2, "time_budget_min": 5.0}
    t |= {**CONSTANT_LR_TRAIN, **PINNED_THREADS, **train}
    return PipelineConfig(
        model=dataclasses.replace(ModelConfig(), **m), train=dataclasses.replace(TrainConfig(), **t)
    )


def run_training(cfg: PipelineConfig, ckpt: Path, pairs=PAIRS, callbacks=None, **kw) -> TrainResult:
    """Train on ``pairs`` (validating on the first three) with the CharTokenizer."""
    return train_model(
        cfg,
        tokenizer=CharTokenizer(),
        train_pairs=pairs,
        valid_pairs=pairs[:3],
        checkpoint_dir=ckpt,
        callbacks=callbacks or [],
        **kw,
    )


def weights_of(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


# --------------------------------------------------------------------------- test sets

REFS = [
    "in the beginning god created the heavens and the earth .",
    "the earth was formless and empty .",
    "god said , let there be light , and there was light .",
    "god saw the light , and saw that it was good .",
    "god called the light day , and the darkness he called night .",
] * 8
POOR = [
    "at first god made heaven and earth .",
    "the world was empty .",
    "god spoke : light ! and light came .",
    "god looked at light , it was good .",
    "light he named day , the dark night .",
] * 8


# Test scores as the evaluate stage writes them (what a logged model carries).
METRICS = {
    "test": {
        "bleu": 1.5,
        "chrf": 12.0,
        "ter": 95.0,
        "signatures": {"bleu": "nrefs:1|tok:13a", "chrf": "nrefs:1|chrf", "ter": "nrefs:1|ter"},
        "sentences": 8,
        "test_set_sha256": "c" * 64,
    }
}


# --------------------------------------------------------------------------- corpora on disk

# Every split in the exact-count tests goes to train, so counts do not depend on hashing.
NO_EVAL = {"valid_fraction": 0.0, "test_fraction": 0.0}

# One line per case; the comment is the drop reason (or "kept").
MESSY_LINES = [
    b"Hallo Welt.\tHello world.",  # 1 kept
    b"  Guten   Morgen.\t Good  morning. \r",  # 2 kept (CRLF, whitespace collapsed)
    b"\tEmpty source.",  # 3 empty_source
    b"Nur Quelle.\t   ",  # 4 empty_target
    b"Hallo Welt.\tHello world.",  # 5 duplicate of 1
    b"\x07Danke.\tThanks.\x00",  # 6 kept, control characters removed
    b"-\t[]",  # 7 no_text
    b"",  # 8 blank line: empty_source
    "Cafe\u0301 bitte.\tCoffee please.".encode(),  # 9 kept, NFC -> "Café bitte."
    b"Danke.\tThanks.",  # 10 duplicate of 6 after cleaning
    b"x" * 10_000 + b"\tA very long line.",  # 11 too_long
    "起初， 神创造天地。\tIn the beginning.".encode(),  # 12 kept
    b"Ja.\tYes, and this answer is much, much longer than its source.",  # 13 length_ratio
]


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def messy_tsv(tmp_path: Path) -> Path:
    return write(tmp_path / "messy.tsv", b"\n".join(MESSY_LINES) + b"\n")


def prepare(tmp_path: Path, source: Path | str, **kw) -> dict:
    """prepare_corpus of ``source`` into tmp_path/out, every pair in train."""
    return prepare_corpus(DataConfig(source=str(source), **{**NO_EVAL, **kw}), tmp_path / "out")


def rows(source: Path | str, **kw) -> list[tuple[str, str, str]]:
    return [r[:3] for r in read_pairs(str(source), DataConfig(source=str(source), **kw))]


def error(source: Path | str, **kw) -> str:
    """The message of the DataError that preparing ``source`` raises."""
    with pytest.raises(DataError) as exc:
        prepare_corpus(DataConfig(source=str(source), **{**NO_EVAL, **kw}), Path(source).parent)
    return str(exc.value)


# --------------------------------------------------------------------------- markdown

SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.5.1"


def table_cells(row: str) -> list[str]:
    """Split a table row the way GitHub-flavoured markdown does: on unescaped pipes."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


# --------------------------------------------------------------------------- host syncs
# Counts the calls that make the host wait for the device. On a GPU each of these blocks
# the Python thread until the queued kernels finish, so a training step or beam step that
# makes one per sentence crawls. On a CPU they are free, which is why a counter is the only
# way to keep them out from a CPU-only CI.

SYNCING_METHODS = frozenset(
    {
        "item",
        "tolist",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "cpu",
        "nonzero",
        "numpy",
        "masked_select",
    }
)


def _is_boolean_mask_index(func: Any, args: tuple) -> bool:
    """x[mask] needs the mask's count on the host before it can size the result."""
    if getattr(func, "__name__", "") not in ("__getitem__", "__setitem__") or len(args) < 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)


class HostSyncCounter(TorchFunctionMode):
    """Counts host syncs by name while active; `total` is what budgets are checked against."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in SYNCING_METHODS:
            self.counts[name] += 1
        elif _is_boolean_mask_index(func, args):
            self.counts["boolean_mask_index"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------- gloo ranks


def run_gloo_ranks(worker_source: str, tmp_path: Path, world: int = 2) -> None:
    """Run ``worker_source`` as ``world`` gloo ranks on 127.0.0.1, the way torchrun would
    start them, with one thread each; fail with a rank's stderr when it exits non-zero.

    The DDP tests need real processes (a process group cannot be faked in one); each worker
    gets the repo (for its ``sys.path``: ``from tests.support import ...``), the checkpoint
    dir and the output dir as arguments."""
    script = tmp_path / "worker.py"
    script.write_text(worker_source, encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {
            **os.environ, "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(REPO), str(tmp_path / "ckpt"), str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]


# --------------------------------------------------------------------------- trained workspace


@dataclass
class TrainedWorkspace:
    """The one tiny model the serving, registry, tracking, pyfunc and CLI tests share.

    ``root`` is a workspace as the stages leave it (params.yaml, data/prepared, data/vocab,
    models/checkpoints, reports/train.json); ``store`` the MLflow store its training ran in
    (run ``run_id``, model ``model_uri`` logged in it). Tests never write here: those that
    change files or register models work on a copy (``copy_workspace``, ``copy_model``)."""

    root: Path
    params: dict
    cfg: PipelineConfig
    store: Path
    run_id: str
    result: TrainResult
    model_uri: str

    @property
    def checkpoint(self) -> Path:
        return CheckpointDir(self.root / self.cfg.train.checkpoint_dir).best

    @property
    def vocab_dir(self) -> Path:
        return self.root / self.cfg.vocab.out_dir

    def config(self, **sections: dict) -> PipelineConfig:
        """The workspace's config with some sections' keys changed (decode, register...)."""
        from seq2seq_core.config import config_from_dict

        return config_from_dict(self.params_with(**sections))

    def params_with(self, **sections: dict) -> dict:
        params = copy.deepcopy(self.params)
        for section, values in sections.items():
            params[section].update(values)
        return params


# The shared model: tiny_params (208 Genesis verses, the stages' own paths) with a 16-unit
# GRU, two epochs (the tracking tests read two epochs of metrics) and a 100-piece vocabulary
# (with 200 pieces two epochs translate every sentence to nothing; the pyfunc tests need
# some output to compare).
SHARED_MODEL = {"hidden_size": 16, "emb_size": 8, "dropout": 0.0}
SHARED_VOCAB = {"size": 100}
SHARED_TRAIN = {"max_epochs": 2, "batch_tokens": 400, "valid_bleu_sentences": 5}


def train_workspace(root: Path) -> TrainedWorkspace:
    """Ingest, vocab and train the shared model in ``root``, the training inside a
    `pipeline_run` of an MLflow store in ``root/mlflow`` with the metrics callback, and log
    the model there. The tracking tests read that run; its name and tags are theirs."""
    import mlflow

    from flows import tracking
    from seq2seq_core import stages
    from seq2seq_core.config import config_from_dict

    params = tiny_params()
    params["model"].update(SHARED_MODEL)
    params["train"].update(SHARED_TRAIN)
    params["vocab"].update(SHARED_VOCAB)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    cfg = config_from_dict(params)
    previous = mlflow.get_tracking_uri()
    cwd = Path.cwd()
    try:
        os.chdir(root)
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
            tracking.configure_tracking(root / "mlflow")
            stages.ingest(cfg)
            stages.build_vocab(cfg)
            tags = {"prefect.flow_run_id": "flow-run-123", "empty": ""}
            os.chdir(REPO)  # the run's lineage tags (git commit, dvc.lock) are the repo's
            with tracking.pipeline_run(cfg, run_name="tiny", tags=tags) as run:
                os.chdir(root)
                callback = tracking.MlflowTrainCallback(run.info.run_id, flush_every_steps=7)
                result = stages.train(cfg, callbacks=[callback])
                callback.close()
                model_uri = tracking.log_translator_model(
                    checkpoint=root / cfg.train.checkpoint_dir / "best.pt",
                    vocab_dir=root / cfg.vocab.out_dir,
                    cfg=cfg,
                    metrics=METRICS,
                )
    finally:
        os.chdir(cwd)
        mlflow.set_tracking_uri(previous)
    return TrainedWorkspace(root, params, cfg, root / "mlflow", run.info.run_id, result, model_uri)


def copy_workspace(trained: TrainedWorkspace, dest: Path, **sections: dict) -> Path:
    """A copy of the trained workspace (without its MLflow store) in ``dest``, its
    params.yaml with some sections' keys changed: cheap, where training is not."""
    shutil.copytree(trained.root, dest, ignore=shutil.ignore_patterns("mlflow"))
    params = trained.params_with(**sections)
    (dest / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return dest


def copy_model(trained: TrainedWorkspace, dest: Path) -> tuple[Path, Path]:
    """The trained checkpoint and vocabulary copied to dest/ckpt/best.pt and dest/vocab."""
    (dest / "ckpt").mkdir(parents=True)
    shutil.copy2(trained.checkpoint, dest / "ckpt" / "best.pt")
    shutil.copytree(trained.vocab_dir, dest / "vocab")
    return dest / "ckpt" / "best.pt", dest / "vocab"


def json_report_of(command: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` in a fresh process (3 minutes at most); it must succeed, and its last
    line of output is a JSON report, returned."""
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- DVC repositories

# What a clone's stages need: the code (dvc.yaml lists it among each stage's deps and runs
# it as `python -m flows.cli`, from the repository's own copy), the DVC files, the raw data.
DVC_REPO_FILES = ("dvc.yaml", ".dvcignore", ".gitignore")
DVC_REPO_CODE = ("flows", "seq2seq_core")


def copy_dvc_project(dest: Path, *, raw_data: bool = True) -> None:
    """dvc.yaml, .dvcignore, .gitignore and the code its stages list, into ``dest``; the
    raw data too unless ``raw_data`` is false (a test that writes its own)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in DVC_REPO_FILES:
        shutil.copy(REPO / name, dest / name)
    for name in (*DVC_REPO_CODE, *(("data/raw",) if raw_data else ())):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))


def run_in(args: list[str], cwd: Path, *, check: bool = True) -> str:
    """Run ``args`` in ``cwd`` with this venv's bin first on PATH and the MLflow store left
    to the workspace (no ``MLFLOW_TRACKING_URI``); stdout + stderr, which must succeed."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check:
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc_git_repo(repo: Path, params: dict, remote: Path | None = None) -> Path:
    """A git + DVC repository at ``repo`` with this project's code, dvc.yaml and raw data,
    ``params`` as params.yaml, committed; ``remote`` the default DVC remote if given."""
    repo.mkdir(parents=True)
    copy_dvc_project(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    dvc = [sys.executable, "-m", "dvc"]
    run_in(["git", "init", "-q"], repo)
    run_in(["git", "config", "user.email", "ci@example.invalid"], repo)
    run_in(["git", "config", "user.name", "ci"], repo)
    run_in([*dvc, "init", "-q"], repo)
    run_in([*dvc, "config", "core.analytics", "false"], repo)
    if remote is not None:
        run_in([*dvc, "remote", "add", "-d", "local", str(remote)], repo)
    run_in(["git", "add", "-A"], repo)
    run_in(["git", "commit", "-qm", "baseline"], repo)
    return repo
