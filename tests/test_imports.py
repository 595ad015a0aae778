import subprocess
import sys


def test_core_imports_no_orchestration_or_tracking() -> None:
    """The ML library must stay usable without Prefect, MLflow or DVC installed."""
    code = (
        "import sys, importlib, pkgutil, seq2seq_core\n"
        "for m in pkgutil.iter_modules(seq2seq_core.__path__):\n"
        "    importlib.import_module('seq2seq_core.' + m.name)\n"
        "bad = sorted(n for n in ('prefect', 'mlflow', 'dvc') if n in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
