"""The authenticated stack tried from outside, as an attacker would (docs/security.md).

One stack (tests/services.py) for the module: PostgreSQL with scram-sha-256, moto's S3 with
IAM enforced, MLflow's basic-auth app, Prefect with an API auth string. The worker user
registers a real model (the CLI's register stage on the shared tiny model); then anonymous
callers, callers with a wrong password and the read-only user try every write that would
let them swap or move the served model, or run code on a worker, and each gets 401/403
while the registry, the aliases and the bucket stay byte-for-byte what they were. The
allowed paths are checked too: the maintainer moves an alias, the reader translates.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import Stack, clean_env, free_port, pg_bin, s3_objects
from tests.stack_access import (
    EXPERIMENT,
    MLFLOW_ADMIN,
    REGISTERED_MODEL,
    basic_auth,
    boto_credentials,
    mlflow_call,
)
from tests.support import TrainedWorkspace, copy_workspace

pytestmark = pytest.mark.integration

SENTENCES = ["Im Anfang schuf Gott die Himmel und die Erde.", "Und Gott sprach: Es werde Licht!"]
PYTHON_CLI = [sys.executable, "-m", "flows.cli"]
CODE_FILE = "code/flows/pyfunc.py"  # what every loader of the model executes
# What an attacker would write: here it only fails loudly if it were ever executed.
EVIL = b"raise SystemExit('code swapped by an attacker')\n"


def _http(
    method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> int:
    """The status of one raw request (no client library that might add credentials)."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PYTHON_CLI, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    with Stack(tmp_path_factory.mktemp("secure-stack")) as services:
        services.up()
        yield services


@pytest.fixture(scope="module")
def registered(
    stack: Stack, trained_workspace: TrainedWorkspace, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The worker evaluates and registers the shared tiny model through the CLI: version 1,
    `champion` (the gate, running as the worker, may set it)."""
    work = copy_workspace(trained_workspace, tmp_path_factory.mktemp("worker") / "ws")
    env = clean_env(**stack.role_env("worker"))
    for stage in ("evaluate", "register"):
        proc = _cli([stage], work, env)
        assert proc.returncode == 0, f"{stage} as the worker:\n{proc.stderr[-3000:]}"
    record = json.loads((work / "reports" / "registration.json").read_text(encoding="utf-8"))
    assert (record["version"], record["promoted"]) == (1, True)
    version = _admin(
        stack, f"/api/2.0/mlflow/registered-models/alias?name={REGISTERED_MODEL}&alias=champion"
    )["model_version"]
    run = _admin(stack, f"/api/2.0/mlflow/runs/get?run_id={version['run_id']}")["run"]
    return {"workspace": work, "version": version, "run": run}


def _admin(stack: Stack, path: str) -> dict[str, Any]:
    auth = basic_auth(MLFLOW_ADMIN, stack.secrets.get("mlflow-admin"))
    status, body = mlflow_call(stack.mlflow_url, path, auth=auth)
    assert status == 200, (path, status, body)
    return body


def _snapshot(stack: Stack) -> dict[str, Any]:
    """What an attack must not change: the model, its versions with their tags, the runs,
    and every object in the bucket with its ETag (read as admin and with the S3 key)."""
    model = _admin(stack, f"/api/2.0/mlflow/registered-models/get?name={REGISTERED_MODEL}")
    versions = _admin(stack, "/api/2.0/mlflow/model-versions/search?max_results=100")
    experiment = _admin(
        stack, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}"
    )["experiment"]
    auth = basic_auth(MLFLOW_ADMIN, stack.secrets.get("mlflow-admin"))
    _, runs = mlflow_call(
        stack.mlflow_url,
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment_id"]]},
        auth=auth,
    )
    return {
        "aliases": sorted(
            (a["alias"], a["version"]) for a in model["registered_model"].get("aliases", [])
        ),
        "versions": sorted(
            (
                v["version"],
                v.get("source"),
                sorted((t["key"], t["value"]) for t in v.get("tags", [])),
            )
            for v in versions.get("model_versions", [])
        ),
        "runs": sorted(r["info"]["run_id"] for r in runs.get("runs", [])),
        "bucket": s3_objects(stack.s3_endpoint, stack.bucket, "", stack.s3_credentials),
    }


@pytest.fixture(scope="module")
def code_path(stack: Stack, registered: dict[str, Any]) -> str:
    """The proxy path of the version's packaged code, checked to exist (the reader can
    download it; the attacks below try to overwrite it)."""
    source = registered["version"]["source"]
    if source.startswith("models:/"):
        model_id = source.removeprefix("models:/")
        found = _admin(stack, f"/api/2.0/mlflow/logged-models/{model_id}")["model"]
        source = found["info"]["artifact_uri"]
    assert source.startswith("mlflow-artifacts:/"), source
    return (
        f"/api/2.0/mlflow-artifacts/artifacts/{source.removeprefix('mlflow-artifacts:/')}"
        f"/{CODE_FILE}"
    )


def _identities(stack: Stack) -> dict[str, tuple[str | None, int]]:
    """Caller -> (Authorization header, the status MLflow must answer a write with)."""
    return {
        "anonymous": (None, 401),
        "wrong password": (basic_auth("worker", "not-the-password"), 401),
        "reader": (basic_auth("reader", stack.secrets.get("mlflow-reader")), 403),
    }


def test_anonymous_and_reader_writes_are_refused_and_change_nothing(
    stack: Stack, registered: dict[str, Any], code_path: str
) -> None:
    before = _snapshot(stack)
    assert before["aliases"] == [("champion", "1")] or ("champion", "1") in before["aliases"]
    version = registered["version"]["version"]
    experiment_id = registered["run"]["info"]["experiment_id"]
    run_id = registered["run"]["info"]["run_id"]
    writes: dict[str, tuple[str, str, dict[str, Any] | None]] = {
        "move champion": (
            "POST",
            "/api/2.0/mlflow/registered-models/alias",
            {"name": REGISTERED_MODEL, "alias": "champion", "version": version},
        ),
        "delete champion": (
            "DELETE",
            "/api/2.0/mlflow/registered-models/alias",
            {"name": REGISTERED_MODEL, "alias": "champion"},
        ),
        "tag the version": (
            "POST",
            "/api/2.0/mlflow/model-versions/set-tag",
            {"name": REGISTERED_MODEL, "version": version, "key": "sha256", "value": "0" * 64},
        ),
        "register a version": (
            "POST",
            "/api/2.0/mlflow/model-versions/create",
            {"name": REGISTERED_MODEL, "source": registered["version"]["source"], "run_id": run_id},
        ),
        "create a run": ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment_id}),
        "tag the run": (
            "POST",
            "/api/2.0/mlflow/runs/set-tag",
            {"run_id": run_id, "key": "x", "value": "y"},
        ),
        "log a model": (
            "POST",
            "/api/2.0/mlflow/logged-models",
            {"experiment_id": experiment_id, "name": "swap"},
        ),
        "grant itself MANAGE": (
            "POST",
            "/api/2.0/mlflow/registered-models/permissions/create",
            {"name": REGISTERED_MODEL, "username": "reader", "permission": "MANAGE"},
        ),
        "create a user": (
            "POST",
            "/api/2.0/mlflow/users/create",
            {"username": "mallory", "password": "mallory-password-1"},
        ),
    }
    refused: dict[str, int] = {}
    for caller, (auth, expected) in _identities(stack).items():
        for what, (method, path, body) in writes.items():
            status, _ = mlflow_call(stack.mlflow_url, path, body, auth=auth, method=method)
            refused[f"{caller}: {what}"] = status
            assert status == expected, f"{caller} could {what}: {status}"
        # The artifact proxy: overwrite (PUT) and delete the code every loader executes.
        headers = {"Authorization": auth} if auth else {}
        for method, data in (("PUT", EVIL), ("DELETE", None)):
            status = _http(method, f"{stack.mlflow_url}{code_path}", data, headers)
            refused[f"{caller}: {method} {CODE_FILE}"] = status
            assert status == expected, f"{caller} could {method} {CODE_FILE}: {status}"
    assert _snapshot(stack) == before
    print(f"\nrefused MLflow writes: {json.dumps(refused)}")


def test_prefect_refuses_callers_without_the_auth_string(stack: Stack) -> None:
    api = stack.prefect_api
    wrong = "Basic " + __import__("base64").b64encode(b"seq2seq:guess").decode()
    deployment = json.dumps(
        {
            "name": "x",
            "flow_id": "00000000-0000-0000-0000-000000000000",
            "job_variables": {"command": "touch /tmp/pwned"},
        }
    ).encode()
    json_headers = {"Content-Type": "application/json"}
    right = {
        "Authorization": basic_auth(*stack.prefect_auth_string().split(":", 1)),
        **json_headers,
    }
    for headers in (json_headers, {"Authorization": wrong, **json_headers}):
        assert _http("POST", f"{api}/deployments/filter", b"{}", headers) == 401
        assert _http("POST", f"{api}/deployments/", deployment, headers) == 401
        assert _http("POST", f"{api}/flows/", b'{"name": "evil"}', headers) == 401
        assert _http("POST", f"{api}/work_pools/", b'{"name": "evil"}', headers) == 401
    assert _http("GET", f"{api}/health") == 200  # probes stay open, by design
    # With the auth string the same query works, and shows nothing was created.
    request = urllib.request.Request(f"{api}/deployments/filter", data=b"{}", headers=right)
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert json.loads(resp.read()) == []
    request = urllib.request.Request(f"{api}/flows/filter", data=b"{}", headers=right)
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert [f["name"] for f in json.loads(resp.read())] == []


def test_the_bucket_refuses_unsigned_and_wrong_keys(
    stack: Stack, registered: dict[str, Any]
) -> None:
    import boto3
    from botocore.exceptions import ClientError

    before = s3_objects(stack.s3_endpoint, stack.bucket, "", stack.s3_credentials)
    assert any(k.endswith("/best.pt") for k in before)
    key = next(k for k in before if k.endswith(CODE_FILE))
    url = f"{stack.s3_endpoint}/{stack.bucket}/{key}"
    assert _http("PUT", url, EVIL) == 403  # unsigned
    assert _http("DELETE", url) == 403
    assert _http("GET", url) == 403
    # moto answers an anonymous listing with 500 (its IAM check fails), S3 with 403.
    assert _http("GET", f"{stack.s3_endpoint}/{stack.bucket}?list-type=2") in (403, 500)
    right = stack.s3_credentials
    for wrong in (
        {**right, "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE"},
        {**right, "AWS_SECRET_ACCESS_KEY": "wrong" + right["AWS_SECRET_ACCESS_KEY"][5:]},
    ):
        s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, **boto_credentials(wrong))
        with pytest.raises(ClientError) as refused:
            s3.put_object(Bucket=stack.bucket, Key=key, Body=EVIL)
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert s3_objects(stack.s3_endpoint, stack.bucket, "", stack.s3_credentials) == before


def test_postgres_refuses_missing_and_wrong_passwords(stack: Stack) -> None:
    import psycopg2

    where = {"host": "127.0.0.1", "port": stack.postgres_port, "passfile": "/nonexistent"}
    attempts = {
        "postgres, no password": {"user": "postgres", "dbname": "postgres"},
        "postgres, wrong password": {
            "user": "postgres",
            "dbname": "postgres",
            "password": "postgres",
        },
        "mlflow, prefect's password": {
            "user": "mlflow",
            "dbname": "mlflow",
            "password": stack.secrets.get("postgres-prefect"),
        },
        "mlflow into prefect's database": {
            "user": "mlflow",
            "dbname": "prefect",
            "password": stack.secrets.get("postgres-mlflow"),
        },
    }
    for what, params in attempts.items():
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(**where, **params).close()
            pytest.fail(f"connected: {what}")
    # The control: the role's own password opens its own database.
    psycopg2.connect(
        **where, user="mlflow", dbname="mlflow", password=stack.secrets.get("postgres-mlflow")
    ).close()


def test_the_maintainer_moves_an_alias_and_the_reader_reads(
    stack: Stack, registered: dict[str, Any], code_path: str
) -> None:
    version = registered["version"]["version"]
    maintainer = basic_auth("maintainer", stack.secrets.get("mlflow-maintainer"))
    reader = basic_auth("reader", stack.secrets.get("mlflow-reader"))
    alias = {"name": REGISTERED_MODEL, "alias": "rollback-drill", "version": version}
    status, _ = mlflow_call(
        stack.mlflow_url, "/api/2.0/mlflow/registered-models/alias", alias, auth=maintainer
    )
    assert status == 200
    status, found = mlflow_call(
        stack.mlflow_url,
        f"/api/2.0/mlflow/registered-models/alias?name={REGISTERED_MODEL}&alias=rollback-drill",
        auth=reader,
    )
    assert (status, found["model_version"]["version"]) == (200, version)
    status, _ = mlflow_call(
        stack.mlflow_url,
        "/api/2.0/mlflow/registered-models/alias",
        {"name": REGISTERED_MODEL, "alias": "rollback-drill"},
        auth=maintainer,
        method="DELETE",
    )
    assert status == 200
    # The worker may set aliases (the gate) but not delete them (MANAGE only).
    worker = basic_auth("worker", stack.secrets.get("mlflow-worker"))
    status, _ = mlflow_call(
        stack.mlflow_url,
        "/api/2.0/mlflow/registered-models/alias",
        {"name": REGISTERED_MODEL, "alias": "champion"},
        auth=worker,
        method="DELETE",
    )
    assert status == 403
    request = urllib.request.Request(
        f"{stack.mlflow_url}{code_path}", headers={"Authorization": reader}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert b"class" in resp.read()  # the reader downloads the model's files


def test_the_reader_translates_with_the_champion(
    stack: Stack, registered: dict[str, Any], tmp_path: Path
) -> None:
    env = clean_env(**stack.role_env("reader"))
    # In the workspace for its params.yaml; the model itself comes through the server.
    served = _cli(
        ["translate", "--beam", "1", "--model", f"models:/{REGISTERED_MODEL}@champion", *SENTENCES],
        registered["workspace"],
        env,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    local = _cli(
        ["translate", "--beam", "1", "--model", "models/checkpoints/best.pt", *SENTENCES],
        registered["workspace"],
        env,
    )
    # (The tiny model may translate a verse to nothing; the two must agree line by line.)
    assert served.stdout.count("\n") == 2 and served.stdout == local.stdout


def test_a_tampered_artifact_makes_serve_refuse_and_translate_exit_1(
    stack: Stack, registered: dict[str, Any], code_path: str, tmp_path: Path
) -> None:
    """With the bucket's key (a stolen key, or an insider), the code object is replaced
    behind MLflow's back; every loader must refuse it, naming the file, before the model's
    code runs: `serve` does not start, `translate` exits 1 (flows/model_integrity.py)."""
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=stack.s3_endpoint, **boto_credentials(stack.s3_credentials)
    )
    keys = s3_objects(stack.s3_endpoint, stack.bucket, "mlflow/", stack.s3_credentials)
    key = next(k for k in keys if k.endswith(CODE_FILE))
    original = s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    # A harmless change: without the integrity check the model would still load.
    s3.put_object(Bucket=stack.bucket, Key=key, Body=original + b"\nTAMPERED = True\n")
    env = clean_env(**stack.role_env("reader"))
    model = f"models:/{REGISTERED_MODEL}@champion"
    try:
        translate = _cli(
            ["translate", "--beam", "1", "--model", model, *SENTENCES],
            registered["workspace"],
            env,
        )
        serve = _cli(["serve", "--port", str(free_port())], registered["workspace"], env)
    finally:
        s3.put_object(Bucket=stack.bucket, Key=key, Body=original)
    for proc in (translate, serve):
        assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert "pyfunc.py sha256" in last and last.endswith("refusing to load"), last
    assert "serving" not in serve.stderr  # refused before the server was started


def test_secret_files_are_private_and_reused(stack: Stack, tmp_path: Path) -> None:
    import stat

    from tests.stack_secrets import SecretStore, env_file

    folder = stack.secrets.folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert len(modes) == 13 and set(modes.values()) == {0o600}, modes  # 11 + 2 PGPASSFILEs
    assert stat.S_IMODE((stack.state / "mlflow-auth.ini").stat().st_mode) == 0o600
    # A second start reads the same values back; nothing is regenerated.
    assert SecretStore(folder).values() == stack.secrets.values()
    role = env_file(tmp_path / "reader.env", stack.role_env("reader"))
    assert stat.S_IMODE(role.stat().st_mode) == 0o600
    assert "MLFLOW_TRACKING_PASSWORD" in role.read_text() and "AWS_" not in role.read_text()
