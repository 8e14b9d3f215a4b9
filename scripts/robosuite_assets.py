"""List the robosuite data files that this project's Lift and PickPlaceCan envs need, or check them.

    python scripts/robosuite_assets.py            # print the files, one per line, relative to the package
    python scripts/robosuite_assets.py --check    # build both envs with cameras, reset and step them

The list is measured, not written by hand: scripts/gpu_wheels.sh uses it to cut robosuite's ~590 MB
wheel down to what the GPU runs load. Two sources are needed because they see different files:
MuJoCo reads meshes and textures in C from the paths in the compiled MJCF (invisible to Python), while
robosuite itself opens its XMLs and JSONs from Python (caught by an audit hook on ``open``).

``--check`` is how the trimmed wheel is verified: run it with the trimmed install first on
PYTHONPATH; it fails if robosuite is imported from anywhere else, or if any env step fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import sys
from pathlib import Path

# Importable from any working directory (gpu_wheels.sh runs it from a temp dir).
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

TASKS = ("lift", "can")
CAMERA_SIZE = 84
_FILE_ATTR = re.compile(r'\bfile="([^"]+)"')


def _package_dir() -> Path:
    spec = importlib.util.find_spec("robosuite")
    if spec is None or spec.origin is None:
        raise SystemExit("robosuite is not installed")
    return Path(spec.origin).resolve().parent


def _exercise(task: str, steps: int):
    """Create, reset (by seed and from the model XML, as dataset replays do), step and close one env."""
    import numpy as np

    from envs.robomimic.env import RobomimicEnv

    env = RobomimicEnv(task, use_image_obs=True, camera_size=CAMERA_SIZE, render_mode="rgb_array")
    xmls = [env.rs_env.model.get_xml(), env.model_xml()]
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_dim))
    state = env.get_state()
    obs, _ = env.reset(options={"model": state["model"], "state": state["states"]})
    xmls.append(env.model_xml())
    frame = env.render()
    env.close()
    return obs, frame, xmls


def measure() -> list[str]:
    pkg = _package_dir()
    opened: set[Path] = set()

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            opened.add(Path(os.path.abspath(args[0])))

    sys.addaudithook(hook)  # before robosuite's import, which loads macros and controller configs
    xmls: list[str] = []
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the list
        for task in TASKS:
            xmls += _exercise(task, steps=2)[2]
    referenced = {Path(os.path.normpath(f)) for x in xmls for f in _FILE_ATTR.findall(x)}
    outside = sorted(str(f) for f in referenced if not f.is_relative_to(pkg))
    if outside:
        raise SystemExit(f"model references files outside robosuite ({pkg}): {outside[:5]}")

    files = set()
    for f in referenced | opened:
        f = Path(os.path.realpath(f))
        rel = f.relative_to(pkg) if f.is_relative_to(pkg) else None
        # numba writes its caches into the package; they are made, not shipped.
        if rel and f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in rel.parts:
            files.add(rel.as_posix())
    missing = [f for f in referenced if not f.is_file()]
    if missing:
        raise SystemExit(f"model references missing files: {missing[:5]}")
    return sorted(files)


class _Blocker:
    """Makes imports of the given top-level modules fail, as on a machine without them."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by --block)", name=name)


def check() -> None:
    pkg = _package_dir()
    expected = os.environ.get("ROBOSUITE_CHECK_DIR")
    if expected and not pkg.is_relative_to(Path(expected).resolve()):
        raise SystemExit(f"robosuite imported from {pkg}, not from {expected}")
    for task in TASKS:
        obs, frame, _ = _exercise(task, steps=5)
        shapes = {k: obs[k].shape for k in obs if k.endswith("_image")}
        if any(s != (CAMERA_SIZE, CAMERA_SIZE, 3) for s in shapes.values()) or len(shapes) != 2:
            raise SystemExit(f"{task}: unexpected camera observations {shapes}")
        if frame is None or frame.ndim != 3 or frame.std() == 0:
            raise SystemExit(f"{task}: render() gave no image")
        print(f"ok {task}: {shapes} render {frame.shape}")
    print(f"robosuite from {pkg}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="build, reset and step the envs instead of listing files")
    ap.add_argument("--block", default="", help="comma-separated modules to make unimportable (with --check)")
    args = ap.parse_args()
    blocked = {m for m in args.block.split(",") if m}
    if blocked:
        sys.meta_path.insert(0, _Blocker(blocked))
    # The GL backend must be chosen before mujoco is imported; egl works on both CPU (Mesa) and GPU.
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    if args.check:
        check()
        return
    files = measure()
    sys.stdout.write("".join(f + "\n" for f in files))


if __name__ == "__main__":
    main()
