"""MuJoCo table-top tasks (gymnasium), scripted demonstrators and simulated drivers.

Importing ``sim`` picks a headless OpenGL backend for MuJoCo before anything imports ``mujoco``, unless
``MUJOCO_GL`` is already set: ``egl`` when libEGL is installed, ``osmesa`` when only libOSMesa is; with
both, a short subprocess checks that an EGL context really opens and falls back to ``osmesa`` if not.
The choice goes into ``os.environ``, so worker processes inherit it without probing again.
"""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

_EGL_PROBE = "from mujoco.egl import GLContext; c = GLContext(8, 8); c.make_current(); c.free()"


def _egl_works() -> bool:
    env = {**os.environ, "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}
    try:
        return subprocess.run([sys.executable, "-c", _EGL_PROBE], env=env, capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _pick_gl_backend() -> str:
    egl, osmesa = ctypes.util.find_library("EGL"), ctypes.util.find_library("OSMesa")
    if egl and (not osmesa or _egl_works()):
        return "egl"
    return "osmesa" if osmesa else "egl"  # neither: mujoco names the missing library when rendering


if "MUJOCO_GL" not in os.environ and "mujoco" not in sys.modules:
    os.environ["MUJOCO_GL"] = _pick_gl_backend()
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

# Mesa's CPU renderer (llvmpipe) and triton each carry their own LLVM; loading triton *after* Mesa
# segfaults the process (seen with torch 2.15 / triton 3.9, where constructing a torch optimizer imports
# triton). Training and rendering share a process in evaluation during training, so load triton first.
if "triton" not in sys.modules:
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
