"""scripts/gpu_wheels.sh must cover every runtime dependency of the project (offline, no downloads).

The GPU machine has no network, so a dependency added to pyproject.toml without a wheel in the
script (or a reason to skip it, or it being preinstalled there) would only show up there, as an
ImportError. This reads the script's package arrays and its machine-readable comment lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_wheels.sh"
ARRAYS = ("PACKAGES", "SDISTS", "TRIMMED")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert m, f"cannot parse requirement {req!r}"
    return canon(m.group(1))


def parse_script(text: str) -> tuple[set[str], set[str], dict[str, str]]:
    """(names the script fetches, names preinstalled on the GPU, {skipped name: reason})."""
    fetched: set[str] = set()
    for array in ARRAYS:
        m = re.search(rf"(?m)^{array}=\(\n(.*?)^\)", text, re.DOTALL)
        assert m, f"{array}=( ... ) not found in {SCRIPT.name}"
        entries = [line.split("#")[0].strip() for line in m.group(1).splitlines()]
        fetched |= {req_name(e) for e in entries if e}
    lines = re.findall(r"(?m)^# preinstalled:(.*)$", text)
    assert len(lines) == 1, "expected exactly one '# preinstalled:' line"
    preinstalled = {canon(n) for n in lines[0].split()}
    skipped = {canon(n): why.strip() for n, why in re.findall(r"(?m)^# skip: ([\w.-]+):(.*)$", text)}
    return fetched, preinstalled, skipped


def uncovered(deps: list[str], text: str) -> list[str]:
    fetched, preinstalled, skipped = parse_script(text)
    return [d for d in deps if req_name(d) not in fetched | preinstalled | skipped.keys()]


@pytest.fixture(scope="module")
def script_text() -> str:
    return SCRIPT.read_text()


@pytest.fixture(scope="module")
def project_deps() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def test_every_dependency_is_fetched_preinstalled_or_skipped(script_text, project_deps):
    assert project_deps, "pyproject.toml lists no dependencies"
    missing = uncovered(project_deps, script_text)
    assert not missing, f"no wheel in scripts/gpu_wheels.sh for {missing}: add it, or a '# skip: NAME: reason' line"


def test_a_new_dependency_without_a_wheel_is_caught(script_text, project_deps):
    assert uncovered(project_deps + ["some-new-package>=1"], script_text) == ["some-new-package>=1"]


def test_skips_have_reasons_and_av_is_skipped(script_text):
    fetched, preinstalled, skipped = parse_script(script_text)
    assert "av" in skipped
    assert all(len(why) > 10 for why in skipped.values()), skipped
    # A name in two groups would make it unclear whether the GPU gets it from the script.
    assert not fetched & preinstalled, fetched & preinstalled
    assert not fetched & skipped.keys(), fetched & skipped.keys()
    assert not preinstalled & skipped.keys(), preinstalled & skipped.keys()


def test_pinned_versions_match_pyproject(script_text, project_deps):
    pins = {req_name(d): d.split("==", 1)[1].strip() for d in project_deps if "==" in d}
    fetched_pins = dict(re.findall(r"(?m)^\s+([A-Za-z0-9._-]+)==([^\s#]+)\s*$", script_text))
    for name, version in pins.items():
        script_version = {canon(k): v for k, v in fetched_pins.items()}.get(name)
        assert script_version == version, f"{name}: pyproject pins {version}, gpu_wheels.sh {script_version}"
