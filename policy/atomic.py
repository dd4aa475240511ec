"""The one atomic swap of a folder (or file) on disk: checkpoints (``latest``, ``best``) and imported datasets.

A writer builds the complete new version at a temporary path, then ``swap_in(tmp, path)`` renames
``path -> <path>.old``, ``tmp -> path`` and removes ``<path>.old``. A process killed between the two renames
leaves no ``path`` but a complete ``<path>.old``: readers take it through ``existing(path)`` (they never rename,
a writer may be mid-swap), and the writer puts it back with ``recover(path)`` before it writes again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def old_path(path: str | os.PathLike) -> Path:
    """Where ``swap_in`` keeps the previous version of ``path`` during the swap: ``<path>.old``."""
    path = Path(path)
    return path.with_name(path.name + ".old")


def remove(path: Path) -> None:
    """Remove a folder tree, a file or a link; nothing when absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def swap_in(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Replace ``path`` by the complete ``tmp`` (folder or file): two renames, the old version removed last."""
    tmp, path = Path(tmp), Path(path)
    old = old_path(path)
    if path.exists() or path.is_symlink():
        remove(old)  # a stale previous version (its swap completed, its removal was killed)
        path.rename(old)
    tmp.rename(path)
    remove(old)
    return path


def existing(path: str | os.PathLike) -> Path | None:
    """``path`` if it exists, else its ``.old`` left by a kill between the two renames, else None (read-only)."""
    path = Path(path)
    if path.exists():
        return path
    old = old_path(path)
    return old if old.exists() else None


def recover(path: str | os.PathLike) -> bool:
    """Writer side, before writing ``path`` again: put back a ``<path>.old`` that a kill left without its
    ``path``. -> True when something was recovered."""
    path = Path(path)
    old = old_path(path)
    if not (path.exists() or path.is_symlink()) and old.exists():
        old.rename(path)
        return True
    return False
