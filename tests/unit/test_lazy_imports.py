"""Importing a folder is cheap, and what serving loads stays light: each folder's
``__init__`` re-exports nothing that would load its modules (or matplotlib and sacrebleu
with them), and the translator a served model loads pulls in neither."""

from __future__ import annotations

import json
import subprocess
import sys

FOLDERS = ("runtime", "data", "model", "decoding", "training", "evaluation")
HEAVY = ("matplotlib", "sacrebleu", "mlflow", "prefect", "dvc")


def _loaded_after(*statements: str) -> list[list[str]]:
    """Module names loaded in one fresh interpreter after each statement in turn."""
    code = "import json, sys\nseen = []\n"
    for statement in statements:
        code += f"{statement}\nseen.append(sorted(sys.modules))\n"
    code += "print(json.dumps(seen))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_folders_load_none_of_their_modules_and_the_translator_stays_light() -> None:
    folders, translator = _loaded_after(
        "; ".join(f"import seq2seq_core.{f}" for f in FOLDERS),
        "import seq2seq_core.decoding.translator",
    )
    assert {f"seq2seq_core.{f}" for f in FOLDERS} <= set(folders)
    assert [m for m in folders if m.startswith(tuple(f"seq2seq_core.{f}." for f in FOLDERS))] == []
    assert [m for m in HEAVY if m in folders] == []
    assert "seq2seq_core.decoding.translator" in translator
    assert [m for m in HEAVY if m in translator] == []


def test_the_stages_load_matplotlib_only_when_they_plot() -> None:
    (loaded,) = _loaded_after("import seq2seq_core.stages")
    assert "seq2seq_core.stages" in loaded
    assert "matplotlib" not in loaded
    assert "seq2seq_core.evaluation.reports" not in loaded
