"""The registered pyfunc translator: self-contained, loads by alias in a fresh process that
cannot import this repo, translates exactly like ``Translator``, serves cleanly, and
rejects bad input with a message that names the problem. Real MLflow on SQLite."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException

from flows import registry, tracking
from flows.pyfunc import InputRejectedError, TranslatorModel
from seq2seq_core.config import PipelineConfig
from seq2seq_core.decoding.translator import Translator
from tests.support import METRICS, REPO, TrainedWorkspace, copy_model, json_report_of

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

MAX_CHARS = 200
SENTENCES = [
    "Im Anfang schuf Gott die Himmel und die Erde.",
    "Und Gott sprach: Es werde Licht! und es ward Licht.",
    "Und Gott nannte das Licht Tag.",
]


@dataclass
class Registered:
    cfg: PipelineConfig
    tracking_uri: str
    champion_uri: str
    expected: list[str]  # Translator.translate(SENTENCES) in this process
    greedy: list[str]  # the same with beam size 1
    nbest: list[list[str]]  # beam 3, the 3 best
    short: list[str]  # the default decode, at most 2 output tokens


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, trained_workspace: TrainedWorkspace):
    """Log the session's tiny model from a staging copy that is then deleted, register it."""
    root = tmp_path_factory.mktemp("pyfunc")
    cfg = trained_workspace.config(
        data={"max_chars": MAX_CHARS}, register={"model_name": "pyfunc-test"}
    )
    staging = root / "staging"
    checkpoint, vocab_dir = copy_model(trained_workspace, staging)
    translator = Translator.load(checkpoint, vocab_dir, cfg.decode)
    expected = translator.translate(SENTENCES)
    greedy = translator.translate(SENTENCES, beam_size=1)
    nbest = [[t for t, _ in h] for h in translator.translate_nbest(SENTENCES, 3, 3)]
    short = translator.translate(SENTENCES, max_output_tokens=2)

    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = tracking.configure_tracking(root / "store")
        with tracking.pipeline_run(cfg, run_name="pyfunc") as run:
            model_uri = tracking.log_translator_model(
                checkpoint=staging / "ckpt" / "best.pt",
                vocab_dir=staging / "vocab",
                cfg=cfg,
                metrics=METRICS,
            )
            result = registry.register_and_promote(
                cfg, model_uri=model_uri, run_id=run.info.run_id, metrics=METRICS
            )
        assert result.promoted
        shutil.rmtree(staging)  # the model must not need the files it was logged from
        champion = f"models:/{cfg.register.model_name}@champion"
        yield Registered(cfg, uri, champion, expected, greedy, nbest, short)
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def loaded(registered: Registered) -> mlflow.pyfunc.PyFuncModel:
    mlflow.set_tracking_uri(registered.tracking_uri)
    return mlflow.pyfunc.load_model(registered.champion_uri)


def test_model_directory_carries_code_weights_vocab_and_settings(
    registered: Registered, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(registered.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(registered.champion_uri, dst_path=tmp_path))
    for rel in (
        "code/seq2seq_core/decoding/translator.py",
        "code/seq2seq_core/model/checkpoint.py",
        "code/flows/pyfunc.py",
        "artifacts/best.pt",
        "artifacts/vocab/tokenizer.json",
        "artifacts/translator.json",
        "input_example.json",
    ):
        assert (local / rel).is_file(), rel
    # Only the pyfunc wrapper travels from flows/: the rest would drag prefect in.
    assert sorted(p.name for p in (local / "code" / "flows").iterdir()) == [
        "__init__.py",
        "pyfunc.py",
    ]
    settings = json.loads((local / "artifacts" / "translator.json").read_text())
    assert settings["decode"]["max_len_extra"] == 5
    assert settings["max_input_chars"] == MAX_CHARS
    assert settings["test"]["signatures"]["bleu"] == "nrefs:1|tok:13a"
    assert settings["test"]["test_set_sha256"] == "c" * 64
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert json.loads(mlmodel["signature"]["inputs"]) == [
        {"type": "string", "name": "src", "required": True}
    ]
    assert json.loads(mlmodel["signature"]["outputs"]) == [{"type": "string", "required": True}]
    # The request params: integers whose defaults decode as evaluated (beam 5 here; 1.0 x
    # decode.max_input_tokens 256 + max_len_extra 5 tokens at most).
    assert json.loads(mlmodel["signature"]["params"]) == [
        {"name": "beam_size", "type": "long", "default": 5, "shape": None},
        {"name": "n_best", "type": "long", "default": 1, "shape": None},
        {"name": "max_length", "type": "long", "default": 261, "shape": None},
    ]
    example = json.loads((local / "input_example.json").read_text())
    assert example["columns"] == ["src"] and len(example["data"]) == 1


def test_champion_translates_in_a_fresh_process_without_the_repo(
    registered: Registered, tmp_path: Path
) -> None:
    script = tmp_path / "load.py"
    script.write_text(
        textwrap.dedent(
            """
            import importlib.util, json, sys

            # Hide the editable install of the repo: the model's code/ must be enough.
            sys.meta_path = [f for f in sys.meta_path if "__editable__" not in f.__module__]
            sys.path_hooks = [h for h in sys.path_hooks if "__editable__" not in h.__module__]
            sys.path_importer_cache.clear()
            assert importlib.util.find_spec("seq2seq_core") is None, "repo still importable"

            import mlflow.pyfunc
            import pandas as pd

            model = mlflow.pyfunc.load_model(sys.argv[1])
            out = model.predict(pd.DataFrame({"src": json.loads(sys.argv[2])}))
            import seq2seq_core, flows.pyfunc
            print(json.dumps({
                "translations": list(out),
                "core": seq2seq_core.__file__,
                "pyfunc": flows.pyfunc.__file__,
                "prefect": "prefect" in sys.modules,
            }))
            """
        )
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered.tracking_uri}
    command = [sys.executable, str(script), registered.champion_uri, json.dumps(SENTENCES)]
    report = json_report_of(command, tmp_path, env)
    assert report["translations"] == registered.expected
    for key in ("core", "pyfunc"):
        path = Path(report[key])
        assert REPO not in path.parents and "code" in path.parts, path
    assert report["prefect"] is False


def test_loaded_model_matches_translator_and_accepts_dataframe_or_dict(
    registered: Registered, loaded: mlflow.pyfunc.PyFuncModel
) -> None:
    assert any(registered.expected)  # the tiny model says something, so equality means something
    assert loaded.predict(pd.DataFrame({"src": SENTENCES})) == registered.expected
    assert loaded.predict({"src": SENTENCES}) == registered.expected
    # Called directly (no MLflow schema in front), a plain list works as well.
    model = loaded.unwrap_python_model()
    assert isinstance(model, TranslatorModel)
    assert model.predict(None, SENTENCES) == registered.expected
    assert model.predict(None, pd.DataFrame({"src": []})) == []


def test_missing_src_column_and_over_long_input_are_rejected_by_name(
    loaded: mlflow.pyfunc.PyFuncModel,
) -> None:
    model = loaded.unwrap_python_model()
    with pytest.raises(InputRejectedError, match="'src'"):
        model.predict(None, pd.DataFrame({"text": ["Hallo"]}))
    with pytest.raises(ValueError, match="'src'"):  # InputRejectedError is a ValueError
        model.predict(None, {"source": ["Hallo"]})
    with pytest.raises(MlflowException, match="src"):  # MLflow's own schema check
        loaded.predict(pd.DataFrame({"text": ["Hallo"]}))
    with pytest.raises(MlflowException, match=f"the limit is {MAX_CHARS}"):
        loaded.predict(pd.DataFrame({"src": ["a" * (MAX_CHARS + 1)]}))
    with pytest.raises(InputRejectedError, match=r"src\[1\]: expected a string"):
        model.predict(None, ["ok", 3])


def test_scoring_server_answers_translations_and_400_for_bad_input(
    registered: Registered, loaded: mlflow.pyfunc.PyFuncModel
) -> None:
    """What `mlflow models serve` runs, in process: payload formats and error codes."""
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    client = TestClient(scoring_server.init(loaded))
    split = {"dataframe_split": {"columns": ["src"], "data": [[s] for s in SENTENCES]}}
    for payload in (split, {"inputs": {"src": SENTENCES}}):
        response = client.post("/invocations", json=payload)
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": registered.expected}
    too_long = {"dataframe_split": {"columns": ["src"], "data": [["a" * (MAX_CHARS + 1)]]}}
    response = client.post("/invocations", json=too_long)
    assert response.status_code == 400
    assert f"the limit is {MAX_CHARS}" in response.json()["message"]
    response = client.post(
        "/invocations", json={"dataframe_split": {"columns": ["x"], "data": [["a"]]}}
    )
    assert response.status_code == 400 and "src" in response.json()["message"]


def test_behind_the_serve_guard_too_many_sentences_get_413_and_a_dead_model_503(
    registered: Registered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model as `seq2seq serve` runs it (MLflow's app behind seq2seq_serve_app's guard):
    a request over serve.max_sentences_per_request gets 413 without decoding, and once the
    decoding thread has stopped /ping and /invocations answer 503 instead of hanging."""
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    from seq2seq_serve_app import Limits, RequestGuard, health_probe

    monkeypatch.setenv("SEQ2SEQ_MAX_SENTENCES", "2")
    mlflow.set_tracking_uri(registered.tracking_uri)
    model = mlflow.pyfunc.load_model(registered.champion_uri)
    guard = RequestGuard(scoring_server.init(model), Limits(100_000, 5.0, 30.0),
                         health_probe(model))  # fmt: skip
    client = TestClient(guard)
    batcher = model.unwrap_python_model().batcher
    response = client.post("/invocations", json={"inputs": {"src": SENTENCES}})
    assert response.status_code == 413, response.text
    assert "3 sentences in one request; the limit is 2" in response.json()["message"]
    assert batcher.stats.summary()["sentences"] == 0  # nothing was decoded
    response = client.post("/invocations", json={"inputs": {"src": SENTENCES[:2]}})
    assert response.status_code == 200 and response.json()["predictions"] == registered.expected[:2]
    assert client.get("/ping").status_code == 200

    batcher.close()
    assert client.get("/ping").status_code == 503
    assert client.get("/health").status_code == 503
    response = client.post("/invocations", json={"inputs": {"src": SENTENCES[:1]}})
    assert response.status_code == 503 and "not running" in response.json()["message"]


def test_request_params_choose_greedy_nbest_and_length_per_request(
    registered: Registered, loaded: mlflow.pyfunc.PyFuncModel
) -> None:
    frame = pd.DataFrame({"src": SENTENCES})
    # The tiny model's greedy and beam-5 outputs differ, so equality shows the param acts.
    assert registered.greedy != registered.expected
    assert loaded.predict(frame, params={"beam_size": 1}) == registered.greedy
    assert loaded.predict(frame) == registered.expected  # no params: the evaluated decode
    assert loaded.predict(frame, params={"beam_size": 5, "n_best": 1}) == registered.expected
    # n_best > 1: a list per row, best first.
    found = loaded.predict(frame, params={"beam_size": 3, "n_best": 3})
    assert found == registered.nbest and all(len(row) == 3 for row in found)
    assert loaded.predict(frame, params={"max_length": 2}) == registered.short
    assert registered.short != registered.expected


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"beam_size": 11}, r"beam_size=11 is out of bounds: 1\.\.10 \(serve.max_beam_size\)"),
        ({"beam_size": 0}, r"beam_size=0 is out of bounds"),
        ({"beam_size": 2, "n_best": 3}, r"n_best=3 is out of bounds: 1\.\.2 \(the request's"),
        ({"max_length": 262}, r"max_length=262 is out of bounds: 1\.\.261"),
        ({"max_length": "long"}, r"max_length"),  # MLflow's own type check, also a 400
    ],
)
def test_out_of_bounds_params_are_rejected_by_name(
    loaded: mlflow.pyfunc.PyFuncModel, params: dict, message: str
) -> None:
    with pytest.raises(MlflowException, match=message) as raised:
        loaded.predict(pd.DataFrame({"src": SENTENCES}), params=params)
    assert raised.value.get_http_status_code() == 400


def test_scoring_server_takes_params_and_answers_400_out_of_bounds(
    registered: Registered, loaded: mlflow.pyfunc.PyFuncModel
) -> None:
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    client = TestClient(scoring_server.init(loaded))
    payload = {"inputs": {"src": SENTENCES}, "params": {"beam_size": 1}}
    response = client.post("/invocations", json=payload)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": registered.greedy}
    payload["params"] = {"beam_size": 3, "n_best": 3}
    assert client.post("/invocations", json=payload).json() == {"predictions": registered.nbest}
    payload["params"] = {"beam_size": 99}
    response = client.post("/invocations", json=payload)
    assert response.status_code == 400
    assert "beam_size=99 is out of bounds: 1..10" in response.json()["message"]
