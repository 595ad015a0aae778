"""Artifacts written before the package move (commit 321eb2a, flat modules such as
``seq2seq_core/translator.py``) still work: the current code loads the old checkpoint and
translates as the old code did, and a model registered then still serves, both in a
fresh process (with the pre-move code it carries) and in this one the way
``seq2seq translate`` loads the champion (the current code on the old model's artifacts),
once a maintainer has attested it (it was registered before versions recorded digests).

The fixtures in tests/fixtures/pre_move/ were made by its make_fixtures.py with the
pre-move code; ``expected.json`` holds that code's greedy and beam translations.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
import textwrap
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from flows.cli import _load_translator, main
from seq2seq_core.config import DecodeConfig, load_config
from seq2seq_core.decoding.translator import Translator
from seq2seq_core.model.checkpoint import load_model
from seq2seq_core.model.seq2seq import Seq2Seq
from tests.support import FIXTURES, REPO, json_report_of

PRE_MOVE = FIXTURES / "pre_move"
EXPECTED = json.loads((PRE_MOVE / "expected.json").read_text(encoding="utf-8"))
SENTENCES: list[str] = EXPECTED["sentences"]
MODEL_NAME: str = EXPECTED["model_name"]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """The registered pre-move model's MLflow directory, unpacked."""
    with tarfile.open(PRE_MOVE / "registered_model.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    return tmp_path / "unpacked" / "model"


def test_recorded_translations_are_worth_comparing() -> None:
    # A model that said nothing, or the same thing for every sentence, would let a broken
    # load pass; and the model must use beam search for the beam rows to mean something.
    assert EXPECTED["decode"]["beam_size"] > 1
    for kind in ("greedy", "beam"):
        assert len(EXPECTED[kind]) == len(SENTENCES)
        assert len(set(EXPECTED[kind])) > 1, kind
    assert EXPECTED["greedy"] != EXPECTED["beam"]


def test_current_code_loads_the_pre_move_checkpoint_and_translates_as_before() -> None:
    model, meta = load_model(PRE_MOVE / "best.pt")
    assert isinstance(model, Seq2Seq) and not model.training
    assert meta["model_config"]["hidden_size"] == 32
    decode = DecodeConfig(**EXPECTED["decode"])
    translator = Translator.load(PRE_MOVE / "best.pt", PRE_MOVE / "vocab", decode)
    assert translator.translate(SENTENCES, beam_size=1) == EXPECTED["greedy"]
    assert translator.translate(SENTENCES) == EXPECTED["beam"]


# Run with `python -c` in a fresh interpreter: load the model directory, translate, and
# report which seq2seq_core and flows.pyfunc did it.
FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys

    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(sys.argv[1])
    sentences = json.loads(sys.argv[2])
    beam = model.predict(pd.DataFrame({"src": sentences}))
    translator = model.unwrap_python_model().translator
    greedy = translator.translate(sentences, beam_size=1)
    import flows.pyfunc, seq2seq_core
    print(json.dumps({
        "beam": list(beam),
        "greedy": greedy,
        "core": seq2seq_core.__file__,
        "pyfunc": flows.pyfunc.__file__,
        "translator_module": type(translator).__module__,
    }))
    """
)


@pytest.mark.integration
def test_pre_move_model_serves_with_its_own_code_in_a_fresh_process(
    model_dir: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-c", FRESH_PROCESS, str(model_dir), json.dumps(SENTENCES)]
    report = json_report_of(command, tmp_path, env)
    # The current code is installed in this venv, yet the model ran the code it carries.
    code_dir = (model_dir / "code").resolve()
    for key in ("core", "pyfunc"):
        assert code_dir in Path(report[key]).resolve().parents, report[key]
    assert report["translator_module"] == "seq2seq_core.translator"  # the flat, old layout
    assert report["beam"] == EXPECTED["beam"]
    assert report["greedy"] == EXPECTED["greedy"]


def _register_champion(model_dir: Path, tracking_uri: str, root: Path) -> None:
    """Log the model directory to a run of a fresh store and make it `champion`."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("pre-move", artifact_location=(root / "art").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(model_dir), "translator")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL_NAME)
    version = client.create_model_version(
        MODEL_NAME, source=f"{run.info.artifact_uri}/translator", run_id=run.info.run_id
    )
    client.set_registered_model_alias(MODEL_NAME, "champion", version.version)


def test_pre_move_champion_translates_in_process_like_seq2seq_translate(
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    uri = f"sqlite:///{work / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(work)
    # Loading puts the model's code/ first on sys.path; leave later tests the path they had.
    monkeypatch.setattr(sys, "path", list(sys.path))
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump({"register": {"model_name": MODEL_NAME}}), encoding="utf-8")
    previous = mlflow.get_tracking_uri()
    try:
        _register_champion(model_dir, uri, work)
        # Registered the way it was then, with no sha256 digests: refused until a maintainer
        # who checked it attests it (flows/model_integrity.py).
        assert main(["translate", *SENTENCES, "--params", str(params)]) == 1
        assert "registry attest --version 1`; refusing to load" in capsys.readouterr().err
        assert main(["registry", "attest", "--version", "1", "--params", str(params)]) == 0
        assert json.loads(capsys.readouterr().out)["sha256.recorded_by"].startswith("attested")

        # What `seq2seq translate` loads: the current code on the old model's artifacts.
        translator = _load_translator(load_config(params), None)
        assert type(translator) is Translator
        assert Path(sys.modules[Translator.__module__].__file__).is_relative_to(REPO)
        assert translator.decode.beam_size == EXPECTED["decode"]["beam_size"]
        assert translator.translate(SENTENCES) == EXPECTED["beam"]

        for extra, kind in (([], "beam"), (["--beam", "1"], "greedy")):
            code = main(["translate", *SENTENCES, "--params", str(params), *extra])
            out = capsys.readouterr().out
            assert code == 0
            assert out.splitlines() == EXPECTED[kind], kind
    finally:
        mlflow.set_tracking_uri(previous)
