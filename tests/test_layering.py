"""Dependencies point down DESIGN.md's layout: a module never imports one above it (checked on the source)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Package -> packages it must not import (directly or through a lazy import inside a function).
FORBIDDEN = {
    "fibpolicy.attention": ("fibpolicy.encoders", "fibpolicy.policy", "fibpolicy.data", "fibpolicy.training",
                            "fibpolicy.rollout", "fibpolicy.checkpoint", "fibpolicy.evaluation", "envs"),
    "fibpolicy.encoders": ("fibpolicy.policy", "fibpolicy.data", "fibpolicy.training", "fibpolicy.rollout",
                           "fibpolicy.checkpoint", "fibpolicy.evaluation", "envs"),
    "fibpolicy.policy": ("fibpolicy.data", "fibpolicy.training", "fibpolicy.rollout", "fibpolicy.evaluation", "envs"),
    "fibpolicy.data": ("fibpolicy.training", "fibpolicy.rollout", "fibpolicy.evaluation", "envs"),
    "fibpolicy.training": ("fibpolicy.rollout", "fibpolicy.evaluation", "envs"),
    "fibpolicy.rollout": ("fibpolicy.training", "fibpolicy.evaluation", "envs"),
    "fibpolicy.shape_meta": ("fibpolicy.",),
    "fibpolicy.atomic": ("fibpolicy.",),
    "fibpolicy.device": ("fibpolicy.",),
    "fibpolicy.rotation": ("fibpolicy.",),
    "envs": ("fibpolicy",),
    # training composes the others and imports no env; a task names its env and its data preparation in
    # its config. Only the entry points below (which compose, like train.py) may import envs.
    "fibpolicy": ("envs",),
}
ENTRY_POINTS = {"fibpolicy.record_robomimic_demos"}
# The one exception: envs write their files (demo stores) through the project's one atomic-write helper,
# a leaf module that itself imports nothing from fibpolicy (checked above).
ALLOWED = {"envs": ("fibpolicy.atomic",)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _violations() -> list[str]:
    bad = []
    for path in sorted([*(ROOT / "fibpolicy").rglob("*.py"), *(ROOT / "envs").rglob("*.py")]):
        module = _module_name(path)
        if module in ENTRY_POINTS:
            continue
        for owner, forbidden in FORBIDDEN.items():
            if module == owner or module.startswith(owner + "."):
                allowed = ALLOWED.get(owner, ())
                for name in _imports(path):
                    if any(name == a or name.startswith(a + ".") for a in allowed):
                        continue
                    if any(name == f or name.startswith(f if f.endswith(".") else f + ".") for f in forbidden):
                        bad.append(f"{module} imports {name}")
    return sorted(set(bad))


def test_no_module_imports_one_above_it():
    assert _violations() == []


def test_the_check_sees_relative_imports(tmp_path):
    probe = ROOT / "fibpolicy" / "policy" / "_layering_probe.py"
    probe.write_text("from ..data import SequenceDataset\n")
    try:
        assert "fibpolicy.policy._layering_probe imports fibpolicy.data" in _violations()
    finally:
        probe.unlink()


def test_only_entry_points_import_envs(tmp_path):
    probe = ROOT / "fibpolicy" / "_layering_probe.py"
    probe.write_text("def f():\n    from envs.pusht import PushTEnv\n")
    try:
        assert "fibpolicy._layering_probe imports envs.pusht" in _violations()
    finally:
        probe.unlink()
