"""Who may do what on the stack: the object store's one IAM user and MLflow's three users.

The bucket: moto's server checks every request against its IAM once its first
``S3_BOOTSTRAP_ACTIONS`` actions (made here, before anyone else can connect) have created
a user, its policy, its access key and the bucket. Only the MLflow server and the DVC
clients (worker, maintainer) get that key.

MLflow (basic-auth app, ``default_permission = NO_PERMISSIONS``): the admin creates the
experiment and the registered model and grants

    maintainer  MANAGE  promote, roll back, delete aliases, change permissions
    worker      EDIT    log runs, register versions, set aliases (the gate runs as it)
    reader      READ    search, load and download models (serve, translate)

so a user with no grant (a new account, a typo'd name) sees nothing at all.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

# create_user, put_user_policy, create_access_key, create_bucket: then IAM is enforced.
S3_BOOTSTRAP_ACTIONS = 4
S3_USER = "seq2seq-stack"
REGION = "us-east-1"

MLFLOW_ADMIN = "admin"
MLFLOW_GRANTS = {"maintainer": "MANAGE", "worker": "EDIT", "reader": "READ"}
EXPERIMENT = "seq2seq-pipeline"  # flows/tracking.py::DEFAULT_EXPERIMENT
REGISTERED_MODEL = "seq2seq-translator"  # params.yaml register.model_name


def bootstrap_s3(endpoint: str, bucket: str) -> dict[str, str]:
    """The first actions on a fresh moto server: an IAM user allowed ``s3:*`` on ``bucket``
    alone, its access key, the bucket. Returns the key as ``AWS_*`` variables."""
    import boto3

    # Any key passes while moto still counts unauthenticated actions; it is never kept.
    anon = {
        "aws_access_key_id": "bootstrap",
        "aws_secret_access_key": "bootstrap",
        "region_name": REGION,
    }
    iam = boto3.client("iam", endpoint_url=endpoint, **anon)
    iam.create_user(UserName=S3_USER)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    iam.put_user_policy(UserName=S3_USER, PolicyName="bucket", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=S3_USER)["AccessKey"]
    credentials = {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_DEFAULT_REGION": REGION,
    }
    boto3.client("s3", endpoint_url=endpoint, **boto_credentials(credentials)).create_bucket(
        Bucket=bucket
    )
    return credentials


def boto_credentials(env: dict[str, str]) -> dict[str, str]:
    """``AWS_*`` variables as boto3 client keyword arguments."""
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env.get("AWS_DEFAULT_REGION", REGION),
    }


# ---------------------------------------------------------------------- MLflow


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def mlflow_call(
    url: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    auth: str | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """One REST call to the MLflow server: (status, JSON body or {}). Errors are returned,
    not raised, so a refusal can be asserted."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"text": raw.decode(errors="replace")[:200]}


def provision_mlflow(url: str, admin_password: str, passwords: dict[str, str]) -> None:
    """As the admin: the users in ``MLFLOW_GRANTS`` (passwords from ``passwords``), the
    experiment and the registered model, and each user's grant on both. Idempotent."""
    admin = basic_auth(MLFLOW_ADMIN, admin_password)

    def call(path: str, body: dict[str, Any], ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
        status, reply = mlflow_call(url, path, body, auth=admin)
        already = reply.get("error_code") == "RESOURCE_ALREADY_EXISTS"
        if status not in ok and not already:
            raise RuntimeError(f"MLflow {path}: {status} {reply.get('error_code', reply)}")
        return reply

    for user in MLFLOW_GRANTS:
        call("/api/2.0/mlflow/users/create", {"username": user, "password": passwords[user]})
    call("/api/2.0/mlflow/experiments/create", {"name": EXPERIMENT})
    _, found = mlflow_call(
        url, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}", auth=admin
    )
    experiment_id = found["experiment"]["experiment_id"]
    call("/api/2.0/mlflow/registered-models/create", {"name": REGISTERED_MODEL})
    for user, permission in MLFLOW_GRANTS.items():
        for resource_type, resource_id in (
            ("experiment", experiment_id),
            ("registered_model", REGISTERED_MODEL),
        ):
            call(
                "/api/3.0/mlflow/users/permissions/grant",
                {
                    "username": user,
                    "resource_type": resource_type,
                    "resource_id": resource_id,
                    "permission": permission,
                },
            )
