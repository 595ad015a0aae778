"""Integrity of registered models: sha256 digests recorded with each version, checked by
every loader before anything in the model is imported, unpickled or torch-loaded.

A registered model carries code that runs on load (``code/``, the ``python_model`` script
or pickle that ``MLmodel`` names), and whoever can write the artifact store can change it.
The registry's tags live in the tracking database, not in the bucket, so they are the
trust anchor: when a version is created (``registry.register_and_promote``), the files the
store then holds are hashed and recorded as tags:

- ``sha256.files``: JSON ``{relative path: sha256}`` of every file in the model directory,
  so that a failed check can name the file;
- ``sha256.weights``, ``sha256.tokenizer``, ``sha256.code``: one digest per group (the
  ``checkpoint`` artifact; the ``vocab`` artifact; ``code/`` plus ``MLmodel`` and the
  ``python_model`` file, which decide what is imported), for a person comparing versions;
- ``sha256.manifest``: one digest of the whole directory;
- ``sha256.recorded_by``: ``registration``, or who attested an older version and when.

A group's digest is what coreutils give for its files, so anyone can recompute it::

    cd MODEL_DIR && find code MLmodel translator_model.py -type f | LC_ALL=C sort \
        | xargs sha256sum | sha256sum

``fetch_verified_model`` is the only way a loader gets a registered model: it resolves the
alias to a version, downloads that version and compares every file with the recorded
manifest; a changed, missing or added file raises ``ModelIntegrityError`` with one line
naming it. A version registered before digests existed is refused until a maintainer runs
``seq2seq registry attest --version N`` after checking it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from flows.lineage import operator_identity

FILES_TAG = "sha256.files"
MANIFEST_TAG = "sha256.manifest"
WEIGHTS_TAG = "sha256.weights"
TOKENIZER_TAG = "sha256.tokenizer"
CODE_TAG = "sha256.code"
RECORDED_BY_TAG = "sha256.recorded_by"
DIGEST_TAGS = (FILES_TAG, MANIFEST_TAG, WEIGHTS_TAG, TOKENIZER_TAG, CODE_TAG, RECORDED_BY_TAG)
# MLflow writes this file into every downloaded model directory from the registry's own
# data (name and version), so it is never the store's bytes and is left out.
CLIENT_WRITTEN = frozenset({"registered_model_meta"})
_CHUNK = 1 << 20


class ModelIntegrityError(ValueError):
    """A registered model's files differ from the digests recorded with its version, or it
    has none; the message is one line naming the version and the file."""


class RegisteredModelNotFoundError(FileNotFoundError):
    """A ``models:/`` URI names no registered version (model, version or alias unknown)."""


@dataclass(frozen=True)
class VersionRef:
    """A resolved ``models:/`` URI: the version, and how the user named it (for messages)."""

    version: ModelVersion
    uri: str

    @property
    def label(self) -> str:
        exact = f"models:/{self.version.name}/{self.version.version}"
        return exact if self.uri == exact else f"{exact} ({self.uri})"


# --------------------------------------------------------------------------- digests


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(model_dir: Path) -> dict[str, str]:
    """``{posix relative path: sha256}`` of every file under ``model_dir``, sorted.

    A symbolic link is refused rather than followed: it could point anywhere."""
    model_dir = Path(model_dir)
    manifest = {}
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_symlink():
            raise ModelIntegrityError(f"{model_dir}: {rel} is a symbolic link; refusing to load")
        if path.is_file() and rel not in CLIENT_WRITTEN:
            manifest[rel] = file_sha256(path)
    return dict(sorted(manifest.items()))


def group_digest(manifest: Mapping[str, str], paths: Iterable[str]) -> str:
    """sha256 of ``sha256sum``'s output for ``paths`` (sorted bytewise): reproducible by hand."""
    lines = "".join(f"{manifest[p]}  {p}\n" for p in sorted(set(paths)))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def groups(model_dir: Path, manifest: Mapping[str, str]) -> dict[str, list[str]]:
    """The files of each digest group, from the MLmodel file (read with yaml.safe_load)."""
    spec = yaml.safe_load((Path(model_dir) / "MLmodel").read_text(encoding="utf-8")) or {}
    pyfunc = spec.get("flavors", {}).get("python_function", {})
    artifacts = pyfunc.get("artifacts", {}) or {}

    def under(prefix: str | None) -> list[str]:
        if not prefix:
            return []
        prefix = prefix.rstrip("/")
        return [p for p in manifest if p == prefix or p.startswith(prefix + "/")]

    def artifact(name: str) -> list[str]:
        entry = artifacts.get(name)
        return under(entry.get("path")) if isinstance(entry, dict) else []

    # What decides what runs on load: the code dir, the loader's spec, the model script
    # (models from code) or pickle (python_model.pkl, executed by unpickling).
    runs = [*under(pyfunc.get("code") or "code"), "MLmodel"]
    runs += [p for p in manifest if "/" not in p and p.endswith((".py", ".pkl"))]
    return {
        WEIGHTS_TAG: artifact("checkpoint"),
        TOKENIZER_TAG: artifact("vocab"),
        CODE_TAG: [p for p in runs if p in manifest],
    }


def digest_tags(model_dir: Path) -> dict[str, str]:
    """Every ``sha256.*`` tag for the model directory (``sha256.recorded_by`` aside)."""
    manifest = file_manifest(model_dir)
    if "MLmodel" not in manifest:
        raise ModelIntegrityError(f"{model_dir}: no MLmodel file; not a model directory")
    grouped = groups(model_dir, manifest)
    tags = {key: group_digest(manifest, files) for key, files in grouped.items()}
    tags[MANIFEST_TAG] = group_digest(manifest, manifest)
    tags[FILES_TAG] = json.dumps(manifest, separators=(",", ":"))
    return tags


def digest_tags_of(model_uri: str) -> dict[str, str]:
    """The ``sha256.*`` tags of the model at ``model_uri`` as the store holds it now: what a
    version created from it records (``recorded_by``: registration)."""
    with tempfile.TemporaryDirectory(prefix="seq2seq-digest-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return {**digest_tags(Path(local)), RECORDED_BY_TAG: "registration"}


# --------------------------------------------------------------------------- checks


def resolve(model_uri: str, client: MlflowClient | None = None) -> VersionRef:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> the registered version.

    Other URIs (``runs:/``, a logged model ``models:/m-...``, a path) have no recorded
    digests and are refused."""
    body = model_uri[len("models:/") :] if model_uri.startswith("models:/") else ""
    if "@" in body:
        name, _, ref = body.partition("@")
    else:
        name, _, ref = body.rpartition("/")
        ref = ref if ref.isdigit() else ""
    if not name or not ref or "/" in ref:
        raise ModelIntegrityError(
            f"{model_uri}: only a registered version (models:/NAME/VERSION or "
            "models:/NAME@ALIAS) has recorded sha256 digests; refusing to load"
        )
    client = client or MlflowClient()
    try:
        found = (
            client.get_model_version(name, ref)
            if ref.isdigit()
            else client.get_model_version_by_alias(name, ref)
        )
    except MlflowException:
        raise RegisteredModelNotFoundError(
            f"{model_uri}: no such registered model version"
        ) from None
    return VersionRef(found, model_uri)


def recorded_files(ref: VersionRef) -> dict[str, str]:
    """The version's ``sha256.files``; a version without it is refused, with the way out."""
    recorded_json = ref.version.tags.get(FILES_TAG)
    if not recorded_json:
        raise ModelIntegrityError(
            f"{ref.label}: no sha256 digests recorded (registered before they existed); "
            f"check its files, then run `seq2seq registry attest --version "
            f"{ref.version.version}`; refusing to load"
        )
    return json.loads(recorded_json)


def verify_model_dir(ref: VersionRef, model_dir: Path) -> Path:
    """Compare every file of ``model_dir`` with the digests recorded on ``ref``'s version;
    raise ``ModelIntegrityError`` naming the first file that differs. Reads bytes only."""
    recorded = recorded_files(ref)
    actual = file_manifest(model_dir)
    problems = manifest_differences(recorded, actual)
    if problems:
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        raise ModelIntegrityError(f"{ref.label}: {problems[0]}{more}; refusing to load")
    # The manifest matched, so MLmodel is the recorded one and safe to read for the groups.
    for key, digest in digest_tags(model_dir).items():
        expected = ref.version.tags.get(key)
        if key != FILES_TAG and expected is not None and expected != digest:
            raise ModelIntegrityError(
                f"{ref.label}: tag {key} {expected[:12]}… disagrees with the recorded files' "
                f"{digest[:12]}… (the tags were edited); refusing to load"
            )
    return Path(model_dir)


def manifest_differences(recorded: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """One phrase per file that differs, sorted by path."""
    problems = []
    for path in sorted(set(recorded) | set(actual)):
        want, got = recorded.get(path), actual.get(path)
        if want == got:
            continue
        if got is None:
            problems.append(f"{path} is missing (recorded sha256 {want[:12]}…)")
        elif want is None:
            problems.append(f"{path} sha256 {got[:12]}… is not in the recorded files (added)")
        else:
            problems.append(f"{path} sha256 {got[:12]}… != recorded {want[:12]}…")
    return problems


def verify_file(version: ModelVersion, rel: str, local: Path) -> Path:
    """Check one downloaded file of ``version`` (``rel``: its path in the model directory)
    against the recorded digests, when the version has them: the gate reads the test
    hypotheses this way, so faked evidence cannot promote a model."""
    recorded_json = version.tags.get(FILES_TAG)
    if recorded_json:
        want, got = json.loads(recorded_json).get(rel), file_sha256(Path(local))
        if want != got:
            problem = manifest_differences({rel: want} if want else {}, {rel: got})[0]
            label = f"models:/{version.name}/{version.version}"
            raise ModelIntegrityError(f"{label}: {problem}; refusing to use it")
    return Path(local)


def fetch_verified_model(model_uri: str, dest: Path) -> Path:
    """Download the registered version ``model_uri`` names into ``dest`` (created; must be
    empty) and check every file against its recorded digests; returns the local model
    directory, to load with ``mlflow.pyfunc.load_model(local_dir)`` (never the URI again:
    that would download unchecked bytes).

    The alias is resolved once, and that version is downloaded by number, so a concurrent
    alias move cannot mix two versions' files and tags."""
    ref = resolve(model_uri)
    recorded_files(ref)  # a version without digests is refused before any download
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ModelIntegrityError(f"{dest}: not empty; a model is fetched into an empty folder")
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{ref.version.name}/{ref.version.version}", dst_path=str(dest)
    )
    return verify_model_dir(ref, Path(local))


def verify_registered_version(name: str, version: str | int) -> None:
    """Download ``name`` v``version`` to a temporary folder and check it (before an alias
    moves onto it); raises ``ModelIntegrityError``."""
    with tempfile.TemporaryDirectory(prefix="seq2seq-verify-") as tmp:
        fetch_verified_model(f"models:/{name}/{version}", Path(tmp) / "model")


def attest(name: str, version: str | int, *, replace: bool = False) -> dict[str, str]:
    """Record the digests of the version's current files, for a version registered before
    digests existed, after a person has checked those files. Refuses to overwrite
    digests that disagree with the files unless ``replace`` (that is what tampering
    looks like)."""
    client = MlflowClient()
    ref = resolve(f"models:/{name}/{version}", client)
    with tempfile.TemporaryDirectory(prefix="seq2seq-attest-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=tmp
        )
        if ref.version.tags.get(FILES_TAG) and not replace:  # already recorded: a check
            try:
                verify_model_dir(ref, Path(local))
            except ModelIntegrityError as exc:
                raise ModelIntegrityError(
                    f"{str(exc).removesuffix('; refusing to load')}; digests already recorded "
                    "disagree: --replace only if you know why the files changed"
                ) from None
            return {k: v for k, v in ref.version.tags.items() if k in DIGEST_TAGS}
        tags = digest_tags(Path(local))
    when = datetime.now(UTC).isoformat()[:19]
    tags[RECORDED_BY_TAG] = f"attested by {operator_identity()} at {when}Z"
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return tags


__all__ = [
    "CODE_TAG", "DIGEST_TAGS", "FILES_TAG", "MANIFEST_TAG", "RECORDED_BY_TAG", "TOKENIZER_TAG",
    "WEIGHTS_TAG", "ModelIntegrityError", "RegisteredModelNotFoundError", "attest",
    "digest_tags", "digest_tags_of", "fetch_verified_model", "file_manifest", "resolve",
    "verify_file", "verify_model_dir", "verify_registered_version",
]  # fmt: skip
