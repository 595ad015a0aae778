"""The registry against a real MLflow store (SQLite in a temp dir): the gate with its
significance test, force, rollback, history, racing promotions and lineage tags."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from flows import alias_moves, cli_registry, gate, registry, tracking
from seq2seq_core.config import PipelineConfig, RegisterConfig, config_from_dict
from seq2seq_core.evaluation.metrics import score_translations
from tests.support import POOR, REFS, REPO, TrainedWorkspace, copy_model

WORSE = [" ".join(h.split()[:3]) for h in POOR]
# One of 40 sentences fixed: a real gain, but absent from a third of the resampled sets.
SLIGHTLY_BETTER = [REFS[0], *POOR[1:]]
SHA = "c" * 64


def cfg_for(name: str, **register: object) -> PipelineConfig:
    return config_from_dict(
        {
            "vocab": {"size": 100},
            "model": {"hidden_size": 16, "emb_size": 8, "dropout": 0.0, "tie_embeddings": "none"},
            "train": {"max_epochs": 1, "batch_tokens": 400, "valid_bleu_sentences": 5},
            "decode": {"max_len_ratio": 1.0, "max_len_extra": 5},
            "evaluate": {"bootstrap_resamples": 300},
            "register": {"model_name": name, **register},
        }
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, trained_workspace: TrainedWorkspace):
    """A store of this module's own, with a copy of the session's tiny model in ckpt/ and
    vocab/ that every test registers versions of."""
    root = tmp_path_factory.mktemp("registry")
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.configure_tracking(root)
        copy_model(trained_workspace, root)
        yield root
    mlflow.set_tracking_uri(previous)


def register(root: Path, cfg: PipelineConfig, hyps: list[str], trigger: str = "test", **kw):
    """Log a model whose test hypotheses are `hyps`, register it and run the gate."""
    eval_dir = root / f"eval-{len(os.listdir(root))}"
    eval_dir.mkdir()
    (eval_dir / "test_hypotheses.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    (eval_dir / "test_references.txt").write_text("\n".join(REFS) + "\n", encoding="utf-8")
    metrics = {"test": {**score_translations(hyps, REFS), "test_set_sha256": SHA, **kw}}
    with tracking.pipeline_run(cfg, run_name="reg", tags={"prefect.flow_run_id": "fr-1"}) as run:
        uri = tracking.log_translator_model(
            checkpoint=root / "ckpt" / "best.pt", vocab_dir=root / "vocab", cfg=cfg,
            metrics=metrics, eval_files=sorted(eval_dir.iterdir()),
        )  # fmt: skip
        return registry.register_and_promote(
            cfg, model_uri=uri, run_id=run.info.run_id, metrics=metrics, trigger=trigger
        )


def holder(name: str, alias: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, alias).version)


def test_gate_sequence_force_rollback_and_history(store: Path) -> None:
    cfg = cfg_for("gate")
    client = MlflowClient()
    first = register(store, cfg, POOR)
    assert (first.version, first.promoted, first.reason) == (1, True, "no champion yet")
    assert first.aliases == ["challenger", "champion"]

    worse = register(store, cfg, WORSE)
    assert (worse.promoted, worse.aliases, worse.champion_version) == (False, ["challenger"], 1)
    assert "is not a gain of at least min_bleu_gain 0" in worse.reason
    tags = client.get_model_version("gate", "2").tags
    assert (
        tags["promotion.decision"] == "kept_challenger" and float(tags["promotion.bleu_delta"]) < 0
    )

    slight = register(store, cfg, SLIGHTLY_BETTER)
    assert not slight.promoted and "is not significant (paired bootstrap p=" in slight.reason
    tags = client.get_model_version("gate", "3").tags
    assert float(tags["promotion.bleu_delta"]) > 0 and float(tags["promotion.p_value"]) >= 0.05

    better = register(store, cfg, REFS)
    assert better.promoted and better.champion_version == 4
    assert "paired bootstrap p=0.0033 < 0.05" in better.reason  # 1 / 301: better every time
    assert client.get_model_version("gate", "1").tags["promotion.replaced_by"] == "4"
    assert (holder("gate", "champion"), holder("gate", "challenger")) == ("4", "4")

    back = registry.rollback(cfg, trigger="cli:test")
    assert (back.version, back.champion_version, back.reason) == (1, 1, "rollback from v4 to v1")
    with pytest.raises(registry.RegistryError, match="replaced no earlier champion"):
        registry.rollback(cfg)

    forced = registry.promote(cfg, version=2, force=True, trigger="cli:test")
    assert forced.promoted and forced.champion_version == 2
    assert forced.reason.startswith("forced over the gate's decision: ")
    assert client.get_model_version("gate", "2").tags["promotion.forced"] == "true"

    moves = registry.history("gate")
    champion_moves = [(m["from"], m["to"]) for m in moves if m["alias"] == "champion"]
    assert champion_moves == [(None, "1"), ("1", "4"), ("4", "1"), ("1", "2")]
    assert [m["to"] for m in moves if m["alias"] == "challenger"] == ["1", "2", "3", "4"]
    promoted = next(m for m in moves if m["alias"] == "champion" and m["to"] == "4")
    assert promoted["trigger"] == "test" and promoted["p_value"] < 0.05
    assert promoted["bleu_delta"] > 50 and "@" in promoted["by"]
    table = cli_registry.history_table(moves)
    assert "rollback from v4 to v1" in table and len(table.splitlines()) == 1 + len(moves)


def test_incomparable_scores_are_not_promoted(store: Path) -> None:
    cfg = cfg_for("incomparable")
    register(store, cfg, POOR)
    other = register(store, cfg, REFS, test_set_sha256="d" * 64)
    assert not other.promoted and "not comparable: different test set" in other.reason
    sig = {"bleu": "nrefs:1|tok:intl", "chrf": "x", "ter": "y"}
    other_sig = register(store, cfg, REFS, signatures=sig)
    assert not other_sig.promoted and "different BLEU signature" in other_sig.reason


def test_chrf_drop_blocks_promotion() -> None:
    tags = {"test.bleu": "20", "test.chrf": "40", "test.test_set_sha256": SHA}
    champion = {**tags, "test.bleu": "10", "test.chrf": "45"}
    decision = gate.decide_promotion(
        tags, champion, champion_version=1, settings=RegisterConfig(max_chrf_drop=1.0)
    )
    assert not decision.promote and decision.reason == "chrF drops by 5.00 (> max_chrf_drop 1)"


RACER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from flows import registry
    from flows import tracking
    from tests.flows import test_registry as t
    root, kind, barrier = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    tracking.configure_tracking(root)
    promote = registry.promote

    def promote_when_both_are_here(*args, **kwargs):
        # Both racers have registered their version; neither has read the champion yet.
        (barrier / kind).touch()
        deadline = time.monotonic() + 180
        while len(list(barrier.iterdir())) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the other racer never reached the barrier")
            time.sleep(0.005)
        return promote(*args, **kwargs)

    registry.promote = promote_when_both_are_here
    hyps = t.REFS if kind == "refs" else [*t.REFS[:10], *t.POOR[10:]]
    result = t.register(root, t.cfg_for("race"), hyps, trigger="racer-" + kind)
    print(json.dumps({"version": result.version, "promoted": result.promoted,
                      "previous": result.tags["promotion.previous_champion"]}))
    """
)


def test_racing_promotions_leave_one_consistent_champion(store: Path, tmp_path: Path) -> None:
    """Two processes promote at once: they meet at a barrier just before `promote`, so
    without the registry lock both would judge against v1 and both become champion."""
    cfg = cfg_for("race")
    register(store, cfg, POOR)  # v1, the champion both racers try to beat
    script = tmp_path / "racer.py"
    script.write_text(RACER, encoding="utf-8")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    racers = [
        subprocess.Popen(
            [sys.executable, str(script), str(REPO), str(store), kind, str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for kind in ("refs", "better")
    ]
    results = {}
    for kind, proc in zip(("refs", "better"), racers, strict=True):
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        results[kind] = json.loads(out.strip().splitlines()[-1])
    # Both beat v1 significantly and "refs" beats "better": whichever went first, the
    # other decided under the lock against what the first left, so "refs" ends champion
    # and the champion moves form one chain from v1.
    assert holder("race", "champion") == str(results["refs"]["version"])
    chain = [(m["from"], m["to"]) for m in registry.history("race") if m["alias"] == "champion"]
    assert chain[0] == (None, "1") and chain[-1][1] == str(results["refs"]["version"])
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chain)), chain
    if results["better"]["promoted"]:  # "better" went first: "refs" replaced it
        assert results["better"]["previous"] == "1"
        assert results["refs"]["previous"] == str(results["better"]["version"])
    else:  # "refs" went first; "better" lost against it, not against v1
        assert results["better"]["previous"] == str(results["refs"]["version"])


def test_lineage_tags_reach_the_model_version(store: Path) -> None:
    result = register(store, cfg_for("lineage"), POOR)
    tags = MlflowClient().get_model_version("lineage", str(result.version)).tags
    assert tags["prefect.flow_run_id"] == "fr-1"
    assert len(tags["config.sha256"]) == 64 and tags["torch.version"].startswith("2.")
    assert tags["host.device"] == "cpu" and tags["python.version"].count(".") == 2
    assert tags["git.dirty"] in ("true", "false") and len(tags["git.commit"]) == 40


def test_a_retried_registration_creates_no_second_version(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure between creating the version and moving its aliases, then a retry (as
    Prefect's task retry does it): one version, with its aliases and one gate decision."""
    from mlflow.exceptions import MlflowException

    cfg = cfg_for("retry")
    eval_dir = store / "eval-retry"
    eval_dir.mkdir()
    (eval_dir / "test_hypotheses.txt").write_text("\n".join(POOR) + "\n", encoding="utf-8")
    (eval_dir / "test_references.txt").write_text("\n".join(REFS) + "\n", encoding="utf-8")
    metrics = {"test": {**score_translations(POOR, REFS), "test_set_sha256": SHA}}
    failing = MlflowClient.set_registered_model_alias

    def alias_service_down(self, *args, **kwargs):
        raise MlflowException("connection reset by peer")

    with tracking.pipeline_run(cfg, run_name="retry") as run:
        uri = tracking.log_translator_model(
            checkpoint=store / "ckpt" / "best.pt", vocab_dir=store / "vocab", cfg=cfg,
            metrics=metrics, eval_files=sorted(eval_dir.iterdir()),
        )  # fmt: skip
        attempt = dict(cfg=cfg, model_uri=uri, run_id=run.info.run_id, metrics=metrics)
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", alias_service_down)
        with pytest.raises(MlflowException, match="connection reset"):
            registry.register_and_promote(**attempt)
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", failing)
        retried = registry.register_and_promote(**attempt)
        again = registry.register_and_promote(**attempt)  # a retry after success
    versions = MlflowClient().search_model_versions("name = 'retry'")
    assert [int(v.version) for v in versions] == [1]
    assert (retried.version, retried.promoted, retried.aliases) == (
        1, True, ["challenger", "champion"]
    )  # fmt: skip
    assert (again.version, again.promoted, again.reason) == (1, True, "no champion yet")
    tags = MlflowClient().get_model_version("retry", "1").tags
    assert tags["promotion.decision"] == "promoted"


class _Killed(BaseException):
    """Stands for SIGKILL in-process (tests/faults/ kills a real process)."""


def test_a_promotion_cut_after_its_alias_move_is_finished_by_the_next_rollback(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intent is written before the alias moves: a promotion cut right after the move
    is finished by the next operation under the lock, and `rollback` goes back to the
    champion before it (before, `rollback` found the new champion's own version as its
    `previous_champion` and changed nothing)."""
    cfg = cfg_for("interrupted")
    register(store, cfg, POOR)  # v1, champion

    def die(where: str) -> None:
        if where == "after_alias":
            raise _Killed(where)

    monkeypatch.setattr(alias_moves, "fault_point", die)
    with pytest.raises(_Killed):
        register(store, cfg, REFS)  # v2 beats v1; cut after `champion` moved to it
    monkeypatch.undo()
    client = MlflowClient()
    pending = registry.pending_move(client, "interrupted")
    assert (pending["from"], pending["to"], pending["kind"]) == ("1", "2", "promotion")
    assert holder("interrupted", "champion") == "2"
    assert client.get_model_version("interrupted", "2").tags["promotion.previous_champion"] == "1"
    assert "promotion.replaced_by" not in client.get_model_version("interrupted", "1").tags

    back = registry.rollback(cfg, trigger="cli:test")
    assert (back.version, back.reason) == (1, "rollback from v2 to v1")
    assert registry.pending_move(client, "interrupted") is None
    assert client.get_model_version("interrupted", "1").tags["promotion.replaced_by"] == "2"
    chain = [
        (m["from"], m["to"]) for m in registry.history("interrupted") if m["alias"] == "champion"
    ]
    assert chain == [(None, "1"), ("1", "2"), ("2", "1")]
