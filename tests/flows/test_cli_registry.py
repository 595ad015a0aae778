"""`seq2seq serve`'s server process: the command line and the scrubbed environment."""

from __future__ import annotations

from pathlib import Path

from flows.cli_registry import serve_command, serve_process_env
from seq2seq_core.config import config_from_dict

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "planted-aws",
    "AWS_ACCESS_KEY_ID": "planted-id",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow",
    "MLFLOW_TRACKING_USERNAME": "planted-user",
    "MLFLOW_TRACKING_TOKEN": "planted-token",
    "PREFECT_API_KEY": "planted-prefect",
    "PREFECT_API_AUTH_STRING": "admin:planted-auth",
    "SOME_OTHER_SECRET": "planted-other",
}


def test_the_server_inherits_an_allowlist_and_no_credential(tmp_path: Path) -> None:
    cfg = config_from_dict({"serve": {"max_sentences_per_request": 7, "body_timeout_s": 3.0}})
    parent = {"PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
              "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": "/extra", **SECRETS}  # fmt: skip
    env = serve_process_env(cfg, tmp_path / "model", parent)
    assert not set(SECRETS) & set(env)
    assert not any("planted" in value for value in env.values())
    assert env["HOME"] == "/home/u" and env["LC_ALL"] == "C.UTF-8"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["PATH"].endswith(":/usr/bin") and env["PYTHONPATH"].endswith(":/extra")
    assert env["SEQ2SEQ_MODEL_DIR"] == str(tmp_path / "model")
    assert env["SEQ2SEQ_MAX_SENTENCES"] == "7" and env["SEQ2SEQ_BODY_TIMEOUT_S"] == "3.0"
    assert env["SEQ2SEQ_MAX_REQUEST_BYTES"] == "1048576"


def test_the_command_runs_uvicorn_on_the_guarded_app_with_the_limits() -> None:
    serve = {"workers": 2, "limit_concurrency": 50, "keep_alive_s": 2.5, "request_timeout_s": 20.0}
    cfg = config_from_dict({"serve": serve})
    command = serve_command(cfg, 5123, "127.0.0.1")
    assert command[1:5] == ["-m", "uvicorn", "--factory", "seq2seq_serve_app:create_app"]
    options = dict(zip(command[5::2], command[6::2], strict=True))
    assert options == {
        "--host": "127.0.0.1", "--port": "5123", "--workers": "2",
        "--loop": "seq2seq_serve_loop:new_event_loop", "--limit-concurrency": "50",
        "--timeout-keep-alive": "3", "--timeout-graceful-shutdown": "20",
    }  # fmt: skip
