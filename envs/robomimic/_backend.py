"""The one place that prepares the process for robosuite + robomimic: OpenGL backend and ``mujoco_py``.

Everything in ``envs.robomimic`` imports robomimic / robosuite through :func:`import_robomimic`, so
the two process-wide fixes below happen exactly once, before either package is imported:

1. **Offscreen OpenGL backend.** MuJoCo reads ``MUJOCO_GL`` (and PyOpenGL ``PYOPENGL_PLATFORM``) when
   it is first imported, and robosuite forces ``egl`` unless ``osmesa``/``glx`` is set. When the user
   has not set ``MUJOCO_GL`` we pick ``egl`` if an EGL context can actually be created (NVIDIA on a
   GPU machine, Mesa llvmpipe on a CPU), else ``osmesa`` if libOSMesa is present. The probe runs in a
   short subprocess because a failed EGL initialisation cannot be undone inside this process; the
   choice is written to ``os.environ`` so worker processes inherit it without probing again. The
   backend in use is :data:`GL_BACKEND` (and is logged once at INFO level).
2. **``mujoco_py``.** robomimic 0.3.0 does ``import mujoco_py`` at the top of
   ``robomimic/envs/env_robosuite.py`` although robosuite 1.4 uses DeepMind's ``mujoco`` bindings; it
   only needs ``mujoco_py.builder.MujocoException`` (for ``EnvRobosuite.rollout_exceptions``). When
   the real package is not installed we put a tiny stand-in module into ``sys.modules`` that provides
   exactly that exception class, so nobody has to install (and compile) mujoco_py. robomimic fixed the
   import upstream in v0.4.0 (commit 8df6e8e). The stand-in is marked ``__fibpolicy_stub__ = True``.
3. **``egl_probe``.** robomimic imports it whenever an env renders offscreen, to pick the EGL device. It
   has no wheel (it builds with cmake), so where it is missing (a GPU machine with carried wheels) a
   stand-in reports no device list and robosuite renders on its default EGL device
   (``MUJOCO_EGL_DEVICE_ID`` chooses another).
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import logging
import os
import subprocess
import sys
import types
from typing import Any

log = logging.getLogger("envs.robomimic")

GL_BACKEND: str | None = None  # "egl" / "osmesa" / whatever MUJOCO_GL the user set; None before setup
GL_BACKEND_SOURCE: str | None = None  # "user" (MUJOCO_GL was set) or "probe"

_EGL_PROBE = (
    "from mujoco.egl import GLContext\n"
    "c = GLContext(16, 16)\n"
    "c.make_current()\n"
    "c.free()\n"
    "print('ok')\n"
)


def _egl_works() -> bool:
    """Whether MuJoCo can create an EGL context here (checked in a subprocess, ~1 s)."""
    env = dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl")
    try:
        out = subprocess.run(
            [sys.executable, "-c", _EGL_PROBE], env=env, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip().endswith("ok")


def select_gl_backend() -> str:
    """Set ``MUJOCO_GL`` / ``PYOPENGL_PLATFORM`` if the user has not, and return the backend in use."""
    global GL_BACKEND, GL_BACKEND_SOURCE
    if GL_BACKEND is not None:
        return GL_BACKEND
    user = os.environ.get("MUJOCO_GL", "").strip().lower()
    if user:
        backend, source = user, "user"
    elif _egl_works():
        backend, source = "egl", "probe"
    elif ctypes.util.find_library("OSMesa"):
        backend, source = "osmesa", "probe"
    else:
        # Nothing works; keep egl (robosuite's own choice) so envs without cameras still run, and
        # say so: rendering will fail with MuJoCo's EGL error.
        backend, source = "egl", "probe"
        log.warning(
            "envs.robomimic: neither EGL nor OSMesa offscreen rendering is available; camera "
            "observations will fail (install Mesa's libegl1 / libosmesa6, or an NVIDIA driver)"
        )
    os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    GL_BACKEND, GL_BACKEND_SOURCE = backend, source
    log.info("envs.robomimic: offscreen rendering with MUJOCO_GL=%s (%s)", backend, source)
    return backend


def _install_mujoco_py_stub() -> None:
    """Provide ``mujoco_py.builder.MujocoException`` if the real mujoco_py is not installed (see module doc)."""
    if "mujoco_py" in sys.modules or importlib.util.find_spec("mujoco_py") is not None:
        return
    pkg = types.ModuleType("mujoco_py")
    builder = types.ModuleType("mujoco_py.builder")

    class MujocoException(Exception):
        """Stand-in for mujoco_py's simulation-instability exception (never raised by robosuite 1.4)."""

    MujocoException.__module__ = "mujoco_py.builder"
    builder.MujocoException = MujocoException
    pkg.builder = builder
    pkg.__fibpolicy_stub__ = True
    pkg.__doc__ = "Stand-in installed by envs.robomimic._backend for robomimic 0.3.0's unused import."
    sys.modules["mujoco_py"] = pkg
    sys.modules["mujoco_py.builder"] = builder


def _install_egl_probe_stub() -> None:
    """Provide ``egl_probe.get_available_devices`` if egl_probe is not installed (see module doc)."""
    if "egl_probe" in sys.modules or importlib.util.find_spec("egl_probe") is not None:
        return
    module = types.ModuleType("egl_probe")
    module.get_available_devices = lambda: []  # robomimic then leaves robosuite's device choice alone
    module.__fibpolicy_stub__ = True
    module.__doc__ = "Stand-in installed by envs.robomimic._backend: robosuite picks its default EGL device."
    sys.modules["egl_probe"] = module


_MODULES: dict[str, Any] | None = None


def import_robomimic() -> dict[str, Any]:
    """Import robosuite and robomimic's env / obs / file utilities once, after the fixes above.

    Returns a dict with ``robosuite``, ``EnvUtils``, ``ObsUtils``, ``FileUtils``, ``EnvBase``.
    """
    global _MODULES
    if _MODULES is not None:
        return _MODULES
    select_gl_backend()
    _install_mujoco_py_stub()
    _install_egl_probe_stub()
    # robosuite warns about a missing private macro file on every import; that is expected here.
    logging.getLogger("robosuite_logs").addFilter(lambda record: "macro" not in record.getMessage())
    import contextlib
    import io

    import robosuite

    # robomimic prints a "no private macro file" banner to stdout on import; it would pollute CLI output.
    with contextlib.redirect_stdout(io.StringIO()):
        import robomimic.envs.env_base as EnvBase
        import robomimic.utils.env_utils as EnvUtils
        import robomimic.utils.file_utils as FileUtils
        import robomimic.utils.obs_utils as ObsUtils

    _MODULES = {
        "robosuite": robosuite,
        "EnvUtils": EnvUtils,
        "ObsUtils": ObsUtils,
        "FileUtils": FileUtils,
        "EnvBase": EnvBase,
    }
    return _MODULES


def robosuite_available() -> bool:
    """Whether robosuite and robomimic are installed (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("robosuite", "robomimic", "mujoco"))
