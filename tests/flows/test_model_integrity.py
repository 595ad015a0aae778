"""flows.model_integrity: registration records the sha256 of every file of a version, and
every loader (translate, the warm start, the champion evaluation, rollback, promotion)
refuses a version whose files in the artifact store were changed, naming the file, before
any of its code runs. Real MLflow on SQLite; the tampering is done in the store's folder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from flows import init_from, model_integrity, registry, tracking
from flows.champion_eval import translate_verified
from flows.cli import main
from flows.model_integrity import ModelIntegrityError, fetch_verified_model
from seq2seq_core.config import PipelineConfig
from tests.services import free_port
from tests.support import METRICS, REPO, TrainedWorkspace, copy_model

NAME = "integrity"
SENTENCES = ["Im Anfang schuf Gott die Himmel und die Erde."]


@dataclass
class Store:
    root: Path
    uri: str
    cfg: PipelineConfig
    params: Path
    checkpoint: Path

    def files_of(self, version: int) -> Path:
        """The version's folder in the artifact store (what an attacker would write)."""
        source = MlflowClient().get_model_version(NAME, str(version)).source
        location = mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location
        return Path(location.removeprefix("file://"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, trained_workspace: TrainedWorkspace):
    """v1 and v2 of the session's tiny model, registered the normal way; v2 is the
    champion (forced over v1, so a rollback goes back to v1)."""
    root = tmp_path_factory.mktemp("integrity")
    cfg = trained_workspace.config(register={"model_name": NAME})
    checkpoint, vocab_dir = copy_model(trained_workspace, root)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(trained_workspace.params_with(register={"model_name": NAME})))
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = tracking.configure_tracking(root)
        for _ in range(2):
            with tracking.pipeline_run(cfg, run_name="integrity") as run:
                model_uri = tracking.log_translator_model(
                    checkpoint=checkpoint, vocab_dir=vocab_dir, cfg=cfg, metrics=METRICS
                )
                registry.register_and_promote(
                    cfg, model_uri=model_uri, run_id=run.info.run_id, metrics=METRICS
                )
        registry.promote(cfg, version=2, force=True, trigger="test")
        yield Store(root, uri, cfg, params, checkpoint)
    mlflow.set_tracking_uri(previous)


@pytest.fixture
def in_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """This test's process (and its children) use the module's store, from its folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    mlflow.set_tracking_uri(store.uri)
    monkeypatch.chdir(store.root)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a loaded model prepends its code/
    return store


@contextmanager
def tampered(path: Path, data: bytes | None = None, *, append: bytes = b"") -> Iterator[None]:
    """``path`` in the artifact store overwritten (or created) for the block, then restored."""
    before = path.read_bytes() if path.exists() else None
    path.write_bytes((before or b"") + append if data is None else data)
    try:
        yield
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_bytes(before)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256sum_of(folder: Path, *names: str) -> str:
    """The recipe in model_integrity's docstring, run with coreutils."""
    command = f"find {' '.join(names)} -type f | LC_ALL=C sort | xargs sha256sum | sha256sum"
    out = subprocess.run(command, shell=True, cwd=folder, capture_output=True, text=True)
    return out.stdout.split()[0]


def champion() -> str:
    return str(MlflowClient().get_model_version_by_alias(NAME, "champion").version)


def test_registration_records_the_sha256_of_every_file(in_store: Store) -> None:
    tags = MlflowClient().get_model_version(NAME, "1").tags
    folder = in_store.files_of(1)
    files = json.loads(tags[model_integrity.FILES_TAG])
    on_disk = {
        p.relative_to(folder).as_posix(): sha256(p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file()
    }
    assert files == on_disk and len(files) > 60  # seq2seq_core travels whole
    assert files["artifacts/best.pt"] == sha256(in_store.checkpoint.read_bytes())
    assert files["code/flows/pyfunc.py"] == sha256((REPO / "flows" / "pyfunc.py").read_bytes())
    assert tags[model_integrity.WEIGHTS_TAG] == sha256sum_of(folder, "artifacts/best.pt")
    assert tags[model_integrity.TOKENIZER_TAG] == sha256sum_of(folder, "artifacts/vocab")
    code = sha256sum_of(folder, "code", "MLmodel", "translator_model.py")
    assert tags[model_integrity.CODE_TAG] == code
    listing = "".join(f"{digest}  {rel}\n" for rel, digest in sorted(on_disk.items()))
    assert tags[model_integrity.MANIFEST_TAG] == sha256(listing.encode())
    assert tags[model_integrity.RECORDED_BY_TAG] == "registration"
    # Two versions of the same files record the same digests.
    v2 = MlflowClient().get_model_version(NAME, "2").tags
    assert v2[model_integrity.WEIGHTS_TAG] == tags[model_integrity.WEIGHTS_TAG]


@pytest.mark.parametrize(
    ("rel", "change"),
    [
        ("code/flows/pyfunc.py", b"\nimport os  # planted\n"),
        ("artifacts/best.pt", b"\0"),
        ("artifacts/vocab/spm.model", b"\0"),
        ("code/seq2seq_core/planted.py", b"print('planted')\n"),  # an added file
    ],
)
def test_translate_exits_1_naming_the_changed_file(
    in_store: Store, rel: str, change: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["translate", *SENTENCES, "--model", "models:/integrity/1", "--params", "params.yaml"]
    with tampered(in_store.files_of(1) / rel, append=change):
        code = main(argv)
        err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith(f"seq2seq translate: models:/integrity/1: {rel} sha256 "), err
    assert err.endswith("; refusing to load"), err
    assert main(argv) == 0  # restored: translates again
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_a_tampered_model_never_runs_its_code(in_store: Store, tmp_path: Path) -> None:
    """In a fresh process, as a user runs it: exit 1, one line, and the planted code never
    ran; loaded without the check, the same files do run it (so the test can fail)."""
    marker = tmp_path / "ran"
    script = in_store.files_of(2) / "translator_model.py"
    plant = f"open({str(marker)!r}, 'w').write('ran')\n".encode()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    recorded = json.loads(MlflowClient().get_model_version(NAME, "2").tags["sha256.files"])
    with tampered(script, plant + script.read_bytes()):
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "translate", *SENTENCES],
            cwd=in_store.root, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"seq2seq translate: models:/integrity/2 (models:/integrity@champion): "
            f"translator_model.py sha256 {sha256(script.read_bytes())[:12]}… != recorded "
            f"{recorded['translator_model.py'][:12]}…; refusing to load"
        ]
        assert not marker.exists()
        unchecked = "import mlflow.pyfunc, sys; mlflow.pyfunc.load_model(sys.argv[1])"
        subprocess.run([sys.executable, "-c", unchecked, str(script.parent)], env=env, timeout=180)
        assert marker.read_text() == "ran"


def test_serve_refuses_to_start_on_a_tampered_version(in_store: Store, tmp_path: Path) -> None:
    """`seq2seq serve` checks the files before it starts the server: exit 1, one line, no
    port opened and the planted code never ran."""
    marker = tmp_path / "served"
    script = in_store.files_of(2) / "translator_model.py"
    plant = f"open({str(marker)!r}, 'w').write('ran')\n".encode()
    with tampered(script, plant + script.read_bytes()):
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "serve", "--port", str(free_port())],
            cwd=in_store.root, env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "translator_model.py sha256" in lines[0], proc.stderr
    assert lines[0].endswith("; refusing to load")
    assert not marker.exists()


def test_warm_start_champion_eval_promotion_and_rollback_refuse_a_tampered_version(
    in_store: Store,
) -> None:
    cfg = in_store.cfg
    assert champion() == "2"
    pyfunc = in_store.files_of(1) / "code" / "flows" / "pyfunc.py"
    with tampered(pyfunc, append=b"\n# planted\n"):
        warm = replace(cfg, train=replace(cfg.train, init_from="models:/integrity/1"))
        with pytest.raises(ModelIntegrityError, match=r"code/flows/pyfunc\.py sha256 "):
            init_from.resolve_warm_start(warm)
        assert not list((in_store.root / init_from.CACHE_DIR).glob(f"{NAME}-v1*"))
        with pytest.raises(ModelIntegrityError, match=r"models:/integrity/1: code/flows/pyfunc"):
            translate_verified(NAME, 1, SENTENCES)
        moves = len(registry.history(NAME))
        with pytest.raises(ModelIntegrityError, match=r"code/flows/pyfunc\.py"):
            registry.rollback(cfg, trigger="test")
        with pytest.raises(ModelIntegrityError, match=r"code/flows/pyfunc\.py"):
            registry.promote(cfg, version=1, force=True, trigger="test")
        assert champion() == "2" and len(registry.history(NAME)) == moves  # nothing moved
    # Untampered, every path works: the warm start's files, the eval's translations, rollback.
    source = init_from.resolve_warm_start(warm)
    assert source.checkpoint.read_bytes() == in_store.checkpoint.read_bytes()
    assert len(translate_verified(NAME, 1, SENTENCES)) == 1
    assert registry.rollback(cfg, trigger="test").champion_version == 1
    registry.promote(cfg, version=2, force=True, trigger="test")  # as the module found it
    # A cached warm-start download is checked again on the next run.
    stale = pytest.raises(ModelIntegrityError, match=r"artifacts/best\.pt sha256 ")
    with tampered(source.checkpoint, append=b"\0"), stale:
        init_from.resolve_warm_start(warm)


def test_a_version_without_digests_is_refused_until_attested(
    in_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = MlflowClient()
    old = client.create_model_version(NAME, client.get_model_version(NAME, "1").source)
    uri = f"models:/{NAME}/{old.version}"
    with pytest.raises(ModelIntegrityError) as refused:
        fetch_verified_model(uri, tmp_path / "a")
    assert str(refused.value) == (
        f"{uri}: no sha256 digests recorded (registered before they existed); check its "
        f"files, then run `seq2seq registry attest --version {old.version}`; refusing to load"
    )
    assert not (tmp_path / "a").exists()  # refused before downloading anything

    attest = ["registry", "attest", "--version", str(old.version), "--params", "params.yaml"]
    assert main(attest) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] > 60 and report["sha256.recorded_by"].startswith("attested by ")
    tags = client.get_model_version(NAME, old.version).tags
    assert (
        tags[model_integrity.FILES_TAG]
        == client.get_model_version(NAME, "1").tags[model_integrity.FILES_TAG]
    )
    assert (fetch_verified_model(uri, tmp_path / "b") / "MLmodel").is_file()
    # Attesting again over changed files is refused: that is what tampering looks like.
    with tampered(in_store.files_of(1) / "artifacts" / "translator.json", append=b" "):
        assert main(attest) == 1
        err = capsys.readouterr().err
        assert "artifacts/translator.json sha256 " in err and "--replace only if" in err


def test_the_gate_reads_only_evidence_that_matches_the_digests(in_store: Store) -> None:
    """The promotion gate's test hypotheses come from the store too: a changed file raises
    rather than deciding (shown on translator.json: these versions were logged without
    hypotheses)."""
    version = MlflowClient().get_model_version(NAME, "1")
    rel = "artifacts/translator.json"
    settings = registry._artifact_lines(version, rel)
    assert json.loads("\n".join(settings))["max_input_chars"] == in_store.cfg.data.max_chars
    with (
        tampered(in_store.files_of(1) / rel, append=b"\n"),
        pytest.raises(ModelIntegrityError, match=rf"models:/{NAME}/1: {rel} sha256 "),
    ):
        registry._artifact_lines(version, rel)


def test_uris_without_recorded_digests_are_refused(
    in_store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    source = MlflowClient().get_model_version(NAME, "1").source  # models:/m-<id>
    run_uri = f"runs:/{MlflowClient().get_model_version(NAME, '1').run_id}/translator"
    for uri in (run_uri, source):
        assert main(["translate", *SENTENCES, "--model", uri]) == 1
        err = capsys.readouterr().err
        assert err == (
            f"seq2seq translate: {uri}: only a registered version (models:/NAME/VERSION or "
            "models:/NAME@ALIAS) has recorded sha256 digests; refusing to load\n"
        )
    assert main(["translate", *SENTENCES, "--model", f"models:/{NAME}/9"]) == 1
    assert capsys.readouterr().err.endswith(f"models:/{NAME}/9: no such registered model version\n")
