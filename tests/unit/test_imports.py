"""The core imports no orchestration, and inside it imports point one way, without cycles:
stages -> evaluation/engine/decoding -> model/data -> kernels -> config (and the small
shared modules beside it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from tests.support import REPO

CORE = REPO / "seq2seq_core"
FLOWS = REPO / "flows"

# The folder is the import group. A module may import its own folder, any folder of lower
# rank, and the other folders of the middle tier (rank 3: the training loop decodes for
# validation BLEU and scores it like evaluation does). The top-level modules are groups of
# their own: special_tokens at the bottom, config just above runtime (it reads its sections
# with runtime.typed_yaml), stages at the top.
RANKS: dict[str, int] = {
    "runtime": 0,
    "special_tokens": 0,
    "config": 1,
    "kernels": 1,
    "data": 2,
    "model": 2,
    "decoding": 3,
    "training": 3,
    "evaluation": 3,
    "stages": 4,
}
MIDDLE_TIER = 3


def all_imports(package: Path) -> dict[str, set[str]]:
    """Module (dotted, without the package name) -> every module it imports anywhere in its
    source (at the top, inside functions, or for type checking), fully dotted."""
    modules = {
        ".".join(p.relative_to(package).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    modules.pop("__init__", None)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from seq2seq_core import stages` names a module
                    deps |= {node.module, f"{node.module}.{alias.name}"}
        graph[name] = deps
    return graph


def internal_imports(package: Path) -> dict[str, set[str]]:
    """The package's own modules each module imports, without the package prefix."""
    graph = all_imports(package)
    prefix = f"{package.name}."
    return {
        name: {d.removeprefix(prefix) for d in deps if d.removeprefix(prefix) in graph}
        for name, deps in graph.items()
    }


def core_imports() -> dict[str, set[str]]:
    return internal_imports(CORE)


def group_of(module: str) -> str:
    """The module's folder (or, at the top, the module itself)."""
    top = module.split(".")[0]
    if top not in RANKS:
        raise AssertionError(f"seq2seq_core.{module}: {top} has no rank; add it to RANKS here")
    return top


def test_core_imports_no_orchestration_or_tracking() -> None:
    """The ML library must stay usable without Prefect, MLflow or DVC installed."""
    code = (
        "import sys, importlib, pkgutil, seq2seq_core\n"
        "for m in pkgutil.walk_packages(seq2seq_core.__path__, 'seq2seq_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in ('prefect', 'mlflow', 'dvc') if n in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_core_has_no_import_cycles() -> None:
    try:
        tuple(TopologicalSorter(core_imports()).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle in seq2seq_core: {' -> '.join(err.args[1])}") from None


def test_core_imports_point_one_way() -> None:
    wrong = []
    for module, deps in core_imports().items():
        group = group_of(module)
        rank = RANKS[group]
        for dep in deps:
            dep_group = group_of(dep)
            dep_rank = RANKS[dep_group]
            lateral = dep_rank == rank == MIDDLE_TIER
            if dep_group != group and dep_rank >= rank and not lateral:
                wrong.append(f"{module} ({group}) imports {dep} ({dep_group})")
    assert wrong == []


def test_kernels_import_no_model_decoding_engine_or_stages() -> None:
    graph = core_imports()
    kernels = [m for m in graph if group_of(m) == "kernels"]
    assert {"kernels", "kernels.packed_rnn", "kernels.packed_weights"} <= set(kernels)
    for module in kernels:
        assert {group_of(dep) for dep in graph[module]} <= {"kernels", "config", "runtime"}, module


def test_flows_have_no_import_cycles_and_the_core_never_imports_flows() -> None:
    try:
        tuple(TopologicalSorter(internal_imports(FLOWS)).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle in flows: {' -> '.join(err.args[1])}") from None
    into_flows = {
        module: sorted(d for d in deps if d == "flows" or d.startswith("flows."))
        for module, deps in all_imports(CORE).items()
    }
    assert {m: d for m, d in into_flows.items() if d} == {}


def test_the_served_model_imports_only_the_core_and_mlflow() -> None:
    """flows/pyfunc.py travels alone with every registered model (tracking._stage_code copies
    seq2seq_core and this one file): it may import no other flows module and no Prefect."""
    deps = all_imports(FLOWS)["pyfunc"]
    bad = sorted(d for d in deps if d.startswith(("flows.", "prefect", "dvc")) or d == "flows")
    assert bad == []


def test_only_flows_talk_to_prefect_mlflow_and_dvc() -> None:
    """Orchestration and tracking enter through flows/; the stage bodies stay in the core."""
    tools = ("prefect", "mlflow", "dvc")
    users = {
        m for m, deps in all_imports(FLOWS).items() if any(d.split(".")[0] in tools for d in deps)
    }
    assert users  # flows does use them (a test that cannot fail is a defect)
    core_users = {
        m for m, deps in all_imports(CORE).items() if any(d.split(".")[0] in tools for d in deps)
    }
    assert core_users == set()
