"""The train/valid/test splits as MLflow dataset inputs of the run that registers a model.

MLflow's run page lists a run's datasets (its "Datasets used" / Inputs view) and the
runs table has a Dataset column; with the splits logged there a reader sees which data a
version was trained, validated and tested on without reading tags. Each split is one
dataset: named ``train``/``valid``/``test``, context ``training``/``validation``/``test``,
its digest the split file's DVC md5 (from dvc.lock, as the ``dvc.*.md5`` lineage tags; the
file's own md5, which is what DVC would record, where dvc.lock has no entry for it), its
source the parquet path with the corpus it was prepared from (``data.source``, or
``data.valid_source`` / ``data.test_source``), and its schema and row count read from the
parquet footer, so nothing loads the data (a few ms a split; docs/lineage.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from flows import tracking
from flows.lineage import dvc_lock_tags, file_md5
from seq2seq_core.config import PipelineConfig

# (name, MLflow context) per split, as the ingest stage writes <prepared_dir>/<name>.parquet.
SPLITS = (("train", "training"), ("valid", "validation"), ("test", "test"))
# Input tag saying where the digest came from: "dvc.lock" or "file" (no dvc.lock entry).
DIGEST_FROM_TAG = "seq2seq.digest_from"
# Arrow types of the prepared files, as MLflow column types; anything else is named as is.
_ARROW_TO_MLFLOW = {
    "string": "string",
    "large_string": "string",
    "int64": "long",
    "int32": "integer",
    "double": "double",
    "float": "float",
    "bool": "boolean",
}


@dataclass(frozen=True)
class SplitInput:
    name: str  # train | valid | test
    context: str  # training | validation | test
    path: str  # as configured, e.g. data/prepared/train.parquet (the dvc.lock key)
    corpus: str  # the corpus spec it was prepared from, e.g. bible:e-4
    md5: str
    digest_from: str  # dvc.lock | file
    rows: int
    columns: tuple[tuple[str, str], ...]  # (name, MLflow type)

    def entity(self) -> DatasetInput:
        schema = {"mlflow_colspec": [{"name": n, "type": t} for n, t in self.columns]}
        dataset = Dataset(
            name=self.name,
            digest=self.md5,
            # "local": MLflow's UI shows the `uri` of a local source as the dataset's source.
            source_type="local",
            source=json.dumps({"uri": self.path, "corpus": self.corpus}),
            schema=json.dumps(schema),
            profile=json.dumps({"num_rows": self.rows}),
        )
        tags = [
            InputTag(MLFLOW_DATASET_CONTEXT, self.context),
            InputTag(DIGEST_FROM_TAG, self.digest_from),
        ]
        return DatasetInput(dataset=dataset, tags=tags)


def split_inputs(cfg: PipelineConfig, root: Path | None = None) -> list[SplitInput]:
    """The prepared splits under ``root`` (default: the working directory) that exist."""
    import pyarrow.parquet as pq

    root = Path(root or Path.cwd())
    locked = dvc_lock_tags(root)
    data = cfg.data
    corpora = {"train": data.source, "valid": data.valid_source or data.source,
               "test": data.test_source or data.source}  # fmt: skip
    found = []
    for name, context in SPLITS:
        rel = f"{data.prepared_dir.rstrip('/')}/{name}.parquet"
        path = root / rel
        if not path.is_file():
            continue
        md5 = locked.get(f"dvc.{rel}.md5")
        digest_from = "dvc.lock" if md5 else "file"
        meta = pq.read_metadata(path)
        columns = tuple(
            (field.name, _ARROW_TO_MLFLOW.get(str(field.type), str(field.type)))
            for field in meta.schema.to_arrow_schema()
        )
        found.append(
            SplitInput(
                name=name,
                context=context,
                path=rel,
                corpus=str(corpora[name]),
                md5=md5 or file_md5(path),
                digest_from=digest_from,
                rows=meta.num_rows,
                columns=columns,
            )
        )
    return found


def log_split_inputs(
    cfg: PipelineConfig, *, root: Path | None = None, run_id: str | None = None
) -> list[SplitInput]:
    """Log the splits as the run's dataset inputs (one call; logging the same split again,
    as a retried registration does, adds nothing). Returns what was logged."""
    splits = split_inputs(cfg, root)
    if splits:
        tracking.log_inputs([s.entity() for s in splits], run_id=run_id)
    return splits
