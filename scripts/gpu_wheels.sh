#!/usr/bin/env bash
# Collect the wheels an offline GPU machine needs to run fibpolicy, in one folder under 45 MiB.
#
#   bash scripts/gpu_wheels.sh [DEST] [--gl]      # DEST defaults to .whl in the repo root
#
# Run it with the project's CPU venv active: versions are pinned to what is installed there, and
# robosuite's envs are built there to measure which of its assets are used. The GPU machine
# (Python 3.12, x86-64, no network) already has the packages on the "preinstalled" line below; only
# the rest are fetched, and cp312 manylinux wheels are chosen whatever this machine runs.
#   - robosuite 1.4.1 is repacked without the meshes/textures of robots, grippers and mounts that
#     Lift and PickPlaceCan (Panda) never load (scripts/robosuite_assets.py measures the list), then
#     installed into a scratch dir and checked by building both envs with cameras.
#   - antlr4-python3-runtime, robomimic and egl_probe exist only as sdists, so they are built here;
#     egl_probe ships standalone executables, not extension modules, so its wheel is retagged
#     py3-none-linux_x86_64 to install on any Python.
#   - every Requires-Dist of every wheel must be fetched, preinstalled, or skipped below (with why).
#   - --gl also downloads the Debian EGL/GL libraries into .gl/ (needs apt and the package mirror).
# On the GPU machine (names, not files, so already-installed packages are left alone):
#   pip install --no-index --no-deps --find-links .whl -r .whl/packages.txt
#
# Machine-readable lines, read by tests/test_gpu_wheels.py:
# preinstalled: torch torchvision timm triton numpy safetensors h5py matplotlib opencv-python-headless scipy numba pillow psutil pyyaml tqdm tensorboard imageio absl-py etils huggingface-hub typing-extensions cloudpickle pytest pytest-timeout
# skip: av: PyAV (~40 MB) only writes rollout videos, and the GPU runs write none
# skip: imageio-ffmpeg: robomimic lists it for video writing only (~30 MB), which the GPU runs do not do
# skip: opencv-python: robosuite's cv2 is provided by the preinstalled opencv-python-headless
# skip: pynput: only robosuite.devices (keyboard teleoperation) imports it; nothing here does
# skip: glfw: mujoco only imports it for MUJOCO_GL=glfw (on-screen windows); the GPU runs use egl
# skip: regex: diffusers uses it only in text tokenizers of pipelines, which fibpolicy never imports
# skip: importlib-metadata: diffusers imports it only on Python < 3.8 (stdlib importlib.metadata otherwise)
# skip: filelock: a requirement of the preinstalled torch and huggingface-hub
# skip: packaging: a requirement of the preinstalled matplotlib, tensorboard and huggingface-hub
# skip: protobuf: a requirement of the preinstalled tensorboard (its version must match tensorboard's)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$ROOT/scripts/$(basename "${BASH_SOURCE[0]}")"
PY=${PYTHON:-python3}
LIMIT_MIB=45

DEST="$ROOT/.whl"
WANT_GL=0
for arg in "$@"; do
    case "$arg" in
        --gl) WANT_GL=1 ;;
        -h|--help) sed -n '2,20p' "$SELF"; exit 0 ;;
        -*) echo "unknown option $arg" >&2; exit 2 ;;
        *) DEST=$arg ;;
    esac
done
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

# Plain downloads; versions come from the running environment unless pinned here.
PACKAGES=(
    diffusers
    hydra-core
    omegaconf
    zarr
    numcodecs
    donfig
    google-crc32c
    gymnasium
    Farama-Notifications
    pymunk
    cffi
    pycparser
    shapely
    mujoco==3.3.7
    PyOpenGL
    termcolor
    tensorboardX
    requests
    certifi
    charset-normalizer
    idna
    urllib3
)
# Built from sdists here (no binary wheels published).
SDISTS=(
    antlr4-python3-runtime
    robomimic==0.3.0
    egl_probe
)
# Repacked from the official wheel.
TRIMMED=(
    robosuite==1.4.1
)

PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)
TARGET_FLAGS=(--only-binary=:all: --python-version 3.12 --implementation cp)
for p in "${PLATFORMS[@]}"; do TARGET_FLAGS+=(--platform "$p"); done

# This machine's pip config lists index folders that may not exist; their warnings are noise.
pip() { "$PY" -m pip "$@" 2> >(grep -v 'is neither a file nor a directory' >&2); }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
OUT="$WORK/out"
mkdir -p "$OUT"

# Small helpers in Python (zip, hashes, metadata); one interpreter call per step.
helper() { "$PY" - "$@" <<'PY'
import base64, hashlib, importlib.metadata as md, os, re, sys, zipfile
from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
from pip._vendor.packaging.version import Version

cmd, args = sys.argv[1], sys.argv[2:]


def pin(spec):
    """NAME==VERSION, taking VERSION from this environment when the spec has none."""
    if "==" in spec:
        return spec
    try:
        return f"{spec}=={md.version(spec)}"
    except md.PackageNotFoundError:
        sys.exit(f"{spec} is not installed in {sys.executable}; install it or pin it in gpu_wheels.sh")


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack(src, dst, keep, retag=None):
    """Copy the members of wheel src for which keep(name) holds into dst, with a RECORD that matches."""
    with zipfile.ZipFile(src) as zin:
        names = [n for n in zin.namelist() if not n.endswith("/")]
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        lines = []
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
            for n in names:
                if n == record or not (".dist-info/" in n or keep(n)):
                    continue
                data = zin.read(n)
                if retag and n.endswith(".dist-info/WHEEL"):
                    text = re.sub(r"(?m)^Tag: .*\n", "", data.decode())
                    data = (text.rstrip("\n") + f"\nTag: {retag}\n").encode()
                # The original ZipInfo carries the permission bits (egl_probe's executables).
                info = zin.getinfo(n)
                info.compress_type = zipfile.ZIP_DEFLATED
                zout.writestr(info, data, compresslevel=9)
                lines.append(record_line(n, data))
            lines.append(f"{record},,")
            zout.writestr(record, "\n".join(lines) + "\n")
    return len(names), len(lines) - 1


if cmd == "pins":
    print("\n".join(pin(s) for s in args))

elif cmd == "trim-robosuite":
    src, dst, assets_list = args
    with open(assets_list) as f:
        used = {"robosuite/" + line.strip() for line in f if line.strip()}
    # Whole small directories are kept, so other tasks' arenas and objects still load.
    keep_dirs = ("robosuite/models/assets/arenas/", "robosuite/models/assets/objects/")
    def keep(n):
        if "/__pycache__/" in n:
            return False
        if not n.startswith("robosuite/models/assets/"):
            return True  # code, controller configs and macros
        return n == "robosuite/models/assets/base.xml" or n.startswith(keep_dirs) or n in used
    with zipfile.ZipFile(src) as z:
        missing = sorted(used - set(z.namelist()))
    if missing:
        sys.exit(f"measured assets missing from the official wheel: {missing[:5]}")
    total, kept = repack(src, dst, keep)
    print(f"robosuite: kept {kept} of {total} files")

elif cmd == "egl-probe":
    src, dst_dir, tag = args
    name, version = os.path.basename(src).split("-")[:2]
    dst = os.path.join(dst_dir, f"{name}-{version}-{tag}.whl")
    # At run time only the Python and the two probe executables are used; the rest is sources and
    # cmake's build tree.
    repack(src, dst, lambda n: n.endswith((".py", "/build/query_devices", "/build/test_device")), retag=tag)
    print(dst)

elif cmd == "check-requires":
    # Every requirement of every wheel (for the GPU's Python 3.12 on linux) must be met by a wheel
    # here at an acceptable version, or be preinstalled there, or be skipped on purpose.
    dest, script = args
    ok = set()
    for line in open(script):
        m = re.match(r"# (preinstalled|skip): ([\w.-]+)(:)?", line)
        if m:
            names = line.split(":", 1)[1].split() if m.group(1) == "preinstalled" else [m.group(2)]
            ok |= {canonicalize_name(n) for n in names}
    env = dict(default_environment(), python_version="3.12", python_full_version="3.12.0",
               implementation_name="cpython", sys_platform="linux", platform_system="Linux",
               platform_machine="x86_64", extra="")
    wheels = {}
    for fn in os.listdir(dest):
        if fn.endswith(".whl"):
            name, version = fn.split("-")[:2]
            wheels[canonicalize_name(name)] = (Version(version), fn)
    problems = []
    for name, (version, fn) in sorted(wheels.items()):
        with zipfile.ZipFile(os.path.join(dest, fn)) as z:
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        for line in re.findall(r"(?m)^Requires-Dist: (.*)$", meta):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep in wheels:
                if not req.specifier.contains(wheels[dep][0], prereleases=True):
                    problems.append(f"{name} needs {req}, have {wheels[dep][1]}")
            elif dep not in ok:
                problems.append(f"{name} needs {req}: not downloaded, preinstalled or skipped")
    if problems:
        sys.exit("unmet requirements:\n  " + "\n  ".join(problems))
    print(f"requirements: all met for {len(wheels)} wheels")

elif cmd == "names":
    dest = args[0]
    names = sorted({fn.split("-")[0] for fn in os.listdir(dest) if fn.endswith(".whl")}, key=str.lower)
    print("\n".join(names))
PY
}

echo "== pinning versions from $("$PY" -c 'import sys; print(sys.executable)')"
# Assignments first: a failure inside <(...) would not stop the script.
pins=$(helper pins "${PACKAGES[@]}"); mapfile -t PINNED <<< "$pins"
pins=$(helper pins "${SDISTS[@]}"); mapfile -t SDIST_PINNED <<< "$pins"
pins=$(helper pins "${TRIMMED[@]}"); mapfile -t TRIM_PINNED <<< "$pins"

echo "== downloading ${#PINNED[@]} wheels"
pip download -q --no-deps "${TARGET_FLAGS[@]}" -d "$OUT" "${PINNED[@]}"

echo "== building ${SDIST_PINNED[*]} from sdists"
mkdir -p "$WORK/built"
# Two steps: --no-binary on "pip wheel" would also force setuptools itself to build from source.
pip download -q --no-deps --no-binary=:all: -d "$WORK/sdist" "${SDIST_PINNED[@]}"
pip wheel -q --no-deps -w "$WORK/built" "$WORK/sdist"/*
for whl in "$WORK/built"/*.whl; do
    case "$(basename "$whl")" in
        *-py3-none-any.whl) cp "$whl" "$OUT/" ;;
        egl_probe-*) helper egl-probe "$whl" "$OUT" py3-none-linux_x86_64 >/dev/null ;;
        *) echo "unexpected non-pure wheel from an sdist: $whl" >&2; exit 1 ;;
    esac
done

echo "== trimming ${TRIM_PINNED[*]}"
"$PY" -c 'import robosuite, sys; sys.exit(None if robosuite.__version__ == "1.4.1" else
          f"robosuite {robosuite.__version__} is installed; the assets must be measured on 1.4.1")'
pip download -q --no-deps --only-binary=:all: -d "$WORK/rs" "${TRIM_PINNED[@]}"
# Measured in a scratch cwd so robosuite's caches and logs do not land in the repo.
(cd "$WORK" && "$PY" "$ROOT/scripts/robosuite_assets.py" > "$WORK/robosuite_assets.txt")
echo "measured $(wc -l < "$WORK/robosuite_assets.txt") robosuite asset files"
RS_SRC=$(ls "$WORK/rs"/robosuite-*.whl)
helper trim-robosuite "$RS_SRC" "$OUT/$(basename "$RS_SRC")" "$WORK/robosuite_assets.txt"

echo "== checking the trimmed robosuite in a scratch install"
pip install -q --no-deps --target "$WORK/rs_check" "$OUT"/robosuite-*.whl
# ROBOSUITE_CHECK_DIR makes the check fail if robosuite came from anywhere but the scratch install;
# modules of skipped packages that the GPU machine lacks are blocked, so an import of one fails here.
BLOCK=av,imageio_ffmpeg,pynput,glfw,regex
(cd "$WORK" && MUJOCO_GL=egl PYOPENGL_PLATFORM=egl ROBOSUITE_CHECK_DIR="$WORK/rs_check" \
    PYTHONPATH="$WORK/rs_check${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" "$ROOT/scripts/robosuite_assets.py" --check --block "$BLOCK")

echo "== checking requirements"
helper check-requires "$OUT" "$SELF"
helper names "$OUT" > "$OUT/packages.txt"

# Replace the previous set only now, so a failed run leaves the old one intact.
rm -f "$DEST"/*.whl "$DEST"/packages.txt
mv "$OUT"/* "$DEST"/

if [ "$WANT_GL" = 1 ]; then
    echo "== downloading EGL/GL debs into $ROOT/.gl"
    mkdir -p "$ROOT/.gl" /tmp/amd64/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${o[@]}" update
    (cd "$ROOT/.gl" && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi

mib() { awk -v b="$1" -v f="$2" 'BEGIN { printf "%10.2f MiB  %s\n", b / 1048576, f }'; }
table() {  # folder -> prints "size file" rows and returns the byte total in TOTAL
    local dir=$1 f size
    TOTAL=0
    for f in "$dir"/*; do
        [ -f "$f" ] || continue
        size=$(stat -c %s "$f")
        TOTAL=$((TOTAL + size))
        mib "$size" "$(basename "$f")"
    done
}
echo "== $DEST"
table "$DEST"
WHL_TOTAL=$TOTAL
mib "$WHL_TOTAL" "total (limit: under $LIMIT_MIB MiB)"
if [ -d "$ROOT/.gl" ] && compgen -G "$ROOT/.gl/*.deb" >/dev/null; then
    echo "== $ROOT/.gl"
    table "$ROOT/.gl"
    mib "$TOTAL" total
fi
if [ "$WHL_TOTAL" -ge $((LIMIT_MIB * 1048576)) ]; then
    echo "FAIL: $DEST holds $WHL_TOTAL bytes, not under $LIMIT_MIB MiB" >&2
    exit 1
fi
