"""A crash-safe episode replay buffer on zarr (v3 format, a directory store).

Layout (the reference diffusion-policy ReplayBuffer layout)::

    <path>/data/<key>          time-major arrays over all episodes, shape (N, *frame_shape)
    <path>/meta/episode_ends   int64 (E,), cumulative exclusive end index of each episode

An episode is committed by writing ``meta/episode_ends`` last: the data arrays are grown and
written first, so a process killed mid-episode loses only that episode. On open, only the longest
valid prefix of ``episode_ends`` (strictly increasing, > 0, <= the shortest data array) counts as
committed; anything past it is ignored and trimmed by the next ``add_episode``. zarr's LocalStore
writes every chunk and metadata file atomically (temp file + rename).

Foreign stores in the same layout open read-only and strictly (every data array must cover
``episode_ends[-1]``): a zarr v2 directory group and a zip store (``replay_buffer.zarr.zip``), both as
written by the reference diffusion-policy code. Rename or slice their keys with
``policy.data.reference_zarr.open_dataset(path, KeyMap(...))``, or copy them with ``policy.data.convert``.

Storage: images ((T, H, W, 3) uint8) one frame per chunk, Blosc zstd with bit shuffle (about 10x on
clean rendered frames, ~2 ms per 96x96 frame); ``timestamp`` float64; other floats float32;
integer and bool arrays keep their dtype; low-dim arrays in chunks of ``LOWDIM_CHUNK`` steps.
``ReplayBuffer.create(path, ImageLayout(chunk=64, shard=1024))`` stores images for streaming instead
(``policy.data.stream``): chunks of 64 frames inside zarr v3 shards of 1024 frames, so a 100k-frame
camera array is ~100 files and a training block of 64 frames is one chunk to decode
(``python -m policy.data.convert src=old.zarr out=new.zarr layout=stream`` rewrites a dataset so).
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import zipfile
from collections.abc import Iterable, Mapping

import numpy as np
import zarr
from zarr.storage import LocalStore, ZipStore

from policy.data.storage import (  # the public names are re-exported (__all__): callers import them from here
    LOWDIM_CHUNK,
    STREAM_LAYOUT,
    DatasetError,
    ImageLayout,
    blosc_codec,
    check_spec,
    is_image_array,
    storage_dtype,
)

__all__ = ["LOWDIM_CHUNK", "STREAM_LAYOUT", "DatasetError", "ImageLayout", "ReplayBuffer", "check_spec",
           "storage_dtype"]

_FOREIGN_MEMBER = re.compile(r"^data/([^/]+)/(\.zarray|zarr\.json)$")


def _foreign_array_names(path: pathlib.Path) -> list[str]:
    """Names of the arrays under ``data/`` of a v2 directory group or a zip store (from the file listing)."""
    if path.is_file():
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    else:
        names = [p.relative_to(path).as_posix() for p in path.glob("data/*/*") if p.is_file()]
    return sorted({m.group(1) for n in names if (m := _FOREIGN_MEMBER.match(n))})


def _committed_ends(ends: np.ndarray, max_len: int) -> np.ndarray:
    """Longest prefix of ``ends`` that is strictly increasing, > 0 and <= ``max_len``."""
    ok = (np.diff(ends, prepend=0) > 0) & (ends <= max_len)  # diff vs prepended 0 also checks > 0
    n_ok = len(ends) if ok.all() else int(np.argmin(ok))
    return ends[:n_ok].copy()


class ReplayBuffer:
    """Episodes of time-major arrays in a zarr group; see the module docstring for the layout."""

    def __init__(self, path: pathlib.Path, root: zarr.Group, read_only: bool, foreign: bool = False,
                 layout: ImageLayout | None = None) -> None:
        """Use ``ReplayBuffer.create`` or ``ReplayBuffer.open`` instead.

        ``foreign``: a v2 or zip store written elsewhere; its arrays are found from the file listing (so
        an array whose codec is unknown is named) and a ``meta/episode_ends`` that runs past an array is
        an error rather than a crashed append.
        """
        self.path = path
        self.read_only = read_only
        self.layout = layout or ImageLayout()  # of image arrays created by add_episode
        self._root = root  # keeps a zip store open
        self._data: zarr.Group = root["data"]  # type: ignore[assignment]
        self._ends_arr: zarr.Array = root["meta/episode_ends"]  # type: ignore[assignment]
        if foreign:
            self._arrays: dict[str, zarr.Array] = {}
            for name in _foreign_array_names(path):
                try:
                    self._arrays[name] = self._data[name]  # type: ignore[assignment]
                except (ValueError, KeyError, TypeError, zarr.errors.BaseZarrError) as e:
                    raise DatasetError(f"dataset {path}: cannot open array data/{name}: {e} (an image codec such "
                                       f"as imagecodecs_jpeg2k needs `pip install imagecodecs` and "
                                       f"imagecodecs.numcodecs.register_codecs())") from e
        else:
            self._arrays = dict(self._data.arrays())
        raw = np.asarray(self._ends_arr[:])
        if raw.ndim != 1 or raw.dtype.kind not in "iu":
            raise DatasetError(
                f"dataset {path}: meta/episode_ends must be a 1-D integer array, "
                f"found {raw.dtype} {raw.shape}"
            )
        max_len = min((a.shape[0] for a in self._arrays.values()), default=0)
        self._ends = _committed_ends(raw.astype(np.int64), max_len)
        if foreign and len(self._ends) != len(raw):  # no crashed appends here: the store is inconsistent
            short = [f"'{k}' has {a.shape[0]}" for k, a in self._arrays.items() if a.shape[0] < raw.max()]
            if short:
                raise DatasetError(f"dataset {path}: meta/episode_ends reaches step {int(raw.max())} but data key "
                                   f"{', '.join(short)} steps (mismatched lengths)")
            raise DatasetError(f"dataset {path}: meta/episode_ends is not strictly increasing and > 0: {raw.tolist()}")

    # ----------------------------------------------------------------- construction

    @classmethod
    def create(cls, path: str | os.PathLike, layout: ImageLayout | None = None) -> ReplayBuffer:
        """Create a new empty dataset at ``path`` (must not exist, or be an empty directory).

        ``layout``: the time chunking of its image arrays (default: one frame per chunk, no shards)."""
        path = pathlib.Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise DatasetError(f"dataset {path}: cannot create, path exists and is not an empty directory")
        root = zarr.open_group(LocalStore(path), mode="w", zarr_format=3)
        root.create_group("data")
        meta = root.create_group("meta")
        meta.create_array("episode_ends", shape=(0,), dtype="int64", chunks=(LOWDIM_CHUNK,), fill_value=0)
        return cls(path, root, read_only=False, layout=layout)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> ReplayBuffer:
        """Open a dataset: mode "r" read-only, "a" append (created if missing or an empty directory).

        Besides our zarr v3 directory, a zarr v2 directory group or a zip store (``*.zarr.zip``) in the same
        layout opens read-only (mode "r").
        """
        path = pathlib.Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if mode == "a" and (not path.exists() or (path.is_dir() and not any(path.iterdir()))):
            return cls.create(path)
        if path.is_file() or (path / ".zgroup").is_file():
            return cls._open_foreign(path, mode)
        if not path.is_dir():
            raise DatasetError(f"dataset {path}: no such directory (missing, or not a directory)")
        missing = [p for p in ("zarr.json", "data/zarr.json", "meta/episode_ends/zarr.json")
                   if not (path / p).is_file()]
        if missing:
            what = ", ".join(p.removesuffix("zarr.json").rstrip("/") or "root zarr group" for p in missing)
            raise DatasetError(f"dataset {path}: not a replay buffer, missing {what}")
        try:
            root = zarr.open_group(LocalStore(path, read_only=(mode == "r")), mode=mode, zarr_format=3)
            return cls(path, root, read_only=(mode == "r"))
        except DatasetError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, zarr.errors.BaseZarrError) as e:
            raise DatasetError(f"dataset {path}: cannot open as a zarr v3 replay buffer: {e!r}") from e

    @classmethod
    def _open_foreign(cls, path: pathlib.Path, mode: str) -> ReplayBuffer:
        """Open a zip store or a zarr v2 directory group read-only."""
        kind = "zip store" if path.is_file() else "zarr v2 group"
        if path.is_file() and not zipfile.is_zipfile(path):
            raise DatasetError(f"dataset {path}: a file that is not a zip store (expected a directory or *.zarr.zip)")
        if mode != "r":
            raise DatasetError(f"dataset {path}: a {kind} opens read-only (mode='r'); to append, copy it first with "
                               f"`python -m policy.data.convert src={path} out=<new.zarr>`")
        try:
            store = ZipStore(path, mode="r", read_only=True) if path.is_file() else LocalStore(path, read_only=True)
            root = zarr.open_group(store, mode="r", zarr_format=None if path.is_file() else 2)
            missing = [k for k in ("data", "meta/episode_ends") if k not in root]
            if missing:
                raise DatasetError(f"dataset {path}: not a replay buffer, {kind} lacks {', '.join(missing)}")
            return cls(path, root, read_only=True, foreign=True)
        except DatasetError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OSError, zipfile.BadZipFile,
                zarr.errors.BaseZarrError) as e:
            raise DatasetError(f"dataset {path}: cannot open as a {kind} replay buffer: {e!r}") from e

    # ----------------------------------------------------------------- read

    @property
    def episode_ends(self) -> np.ndarray:
        """Cumulative exclusive end index of each committed episode, int64 (E,)."""
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        """Number of committed episodes."""
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        """Number of committed time steps over all episodes."""
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def keys(self) -> list[str]:
        """Sorted data keys."""
        return sorted(self._arrays)

    @property
    def frame_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-frame shape and dtype of each key: {key: ((H, W, 3), uint8), ...}; nothing is read."""
        return {k: (tuple(a.shape[1:]), np.dtype(a.dtype)) for k, a in self._arrays.items()}

    @property
    def episode_lengths(self) -> np.ndarray:
        """Length of each committed episode in steps, int64 (E,)."""
        return np.diff(self._ends, prepend=0)

    def episode_slice(self, i: int) -> slice:
        """Global time slice of episode ``i`` (negative indices count from the end)."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"dataset {self.path}: episode {i} out of range ({n} episodes)")
        i %= n
        start = int(self._ends[i - 1]) if i > 0 else 0
        return slice(start, int(self._ends[i]))

    def _check_keys(self, keys: Iterable[str] | None) -> list[str]:
        """Requested keys (all when None); DatasetError naming any unknown one."""
        keys = self.keys if keys is None else list(keys)
        for k in keys:
            if k not in self._arrays:
                raise DatasetError(f"dataset {self.path}: no key '{k}'; found keys: {self.keys}")
        return keys

    def array(self, key: str) -> zarr.Array:
        """The zarr array of ``key`` itself (read lazily; it may run past ``n_steps`` after a crash)."""
        return self._arrays[self._check_keys([key])[0]]

    def get_episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of episode ``i``: {key: (T, *frame_shape)}."""
        sl = self.episode_slice(i)
        return {k: self._arrays[k][sl] for k in self._check_keys(keys)}

    def load(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All committed steps in memory: {key: (n_steps, *frame_shape)}, each array read once."""
        n = self.n_steps
        return {k: self._arrays[k][:n] for k in self._check_keys(keys)}

    def validate(self, spec: Mapping[str, tuple[tuple[int, ...], np.dtype | str]]) -> None:
        """Check that each ``key -> (frame_shape, dtype)`` of ``spec`` is stored so; extra keys are fine.

        Raises DatasetError naming the key, the expected and the found ``(T, ...) dtype``.
        """
        check_spec(f"dataset {self.path}", self.frame_specs, spec)
        ends = self._ends
        if np.any(np.diff(ends) < 0) or (len(ends) and ends[0] < 0):
            raise DatasetError(f"dataset {self.path}: meta/episode_ends is not non-decreasing: {ends}")
        for key, arr in self._arrays.items():
            if self.n_steps > arr.shape[0]:
                raise DatasetError(
                    f"dataset {self.path}: episode_ends[-1]={self.n_steps} exceeds length {arr.shape[0]} "
                    f"of key '{key}'"
                )

    # ----------------------------------------------------------------- write

    def _prepare(self, episode: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Check an episode against the dataset and cast it to storage dtypes; returns (arrays, T)."""
        where = f"dataset {self.path}: add_episode"
        arrays = {str(k): np.asarray(v) for k, v in episode.items()}
        if not arrays:
            raise DatasetError(f"{where}: empty episode (no keys)")
        lengths = {k: (a.shape[0] if a.ndim else 0) for k, a in arrays.items()}
        T = min(lengths.values())
        if T < 1 or len(set(lengths.values())) != 1:
            raise DatasetError(f"{where}: all arrays need the same length T >= 1, got lengths {lengths}")
        if self.n_episodes > 0:
            missing, extra = sorted(set(self._arrays) - set(arrays)), sorted(set(arrays) - set(self._arrays))
            if missing or extra:
                raise DatasetError(f"{where}: key set changed; missing keys {missing}, extra keys {extra}")
        out = {}
        for k, a in arrays.items():
            if self.n_episodes > 0:
                stored = self._arrays[k]
                if a.shape[1:] != tuple(stored.shape[1:]):
                    raise DatasetError(
                        f"{where}: key '{k}' frame shape changed, expected {tuple(stored.shape[1:])}, "
                        f"found {a.shape[1:]}"
                    )
                dtype = np.dtype(stored.dtype)
                if dtype.kind != "f" and a.dtype.kind == "f":
                    raise DatasetError(f"{where}: key '{k}' is stored as {dtype}, cannot write {a.dtype}")
            else:
                dtype = storage_dtype(k, a.dtype)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise DatasetError(f"{where}: key '{k}' contains NaN or inf")
            if dtype.kind in "iu" and a.dtype != dtype and a.dtype.kind in "iu":
                info = np.iinfo(dtype)
                if a.min() < info.min or a.max() > info.max:
                    raise DatasetError(f"{where}: key '{k}' has values outside the range of {dtype}")
            with np.errstate(over="ignore"):  # overflow to inf is reported just below
                cast = a.astype(dtype, copy=False)
            if dtype.kind == "f" and not np.isfinite(cast).all():
                raise DatasetError(f"{where}: key '{k}' overflows {dtype} (inf after the cast)")
            out[k] = cast
        return out, T

    def _trim(self) -> None:
        """Drop anything past the committed episodes (left by a crash) from the store."""
        n_ep = self.n_episodes
        if self._ends_arr.shape[0] != n_ep:
            self._ends_arr[n_ep:] = 0  # zero stale entries kept in a partial chunk, then shrink
            self._ends_arr.resize((n_ep,))
        if n_ep == 0:  # arrays of a crashed first episode: dtype/shape may differ next time
            for k in list(self._arrays):
                del self._data[k]
            self._arrays.clear()
        # uncommitted data past n_steps is dropped when add_episode resizes each array to n_steps + T

    def _create_array(self, k: str, a: np.ndarray) -> None:
        """An empty array for key ``k`` of ``a``'s frame shape and dtype; images in ``self.layout``."""
        image = is_image_array(a)
        chunks = (self.layout.chunk if image else LOWDIM_CHUNK, *a.shape[1:])
        shards = (self.layout.shard, *a.shape[1:]) if image and self.layout.shard else None
        self._arrays[k] = self._data.create_array(k, shape=(0, *a.shape[1:]), dtype=a.dtype, chunks=chunks,
                                                  shards=shards, fill_value=0, compressors=blosc_codec(image))

    def add_episode(self, episode: Mapping[str, np.ndarray]) -> int:
        """Append and commit one episode {key: (T, *frame_shape)}; returns its episode index."""
        if self.read_only:
            raise DatasetError(f"dataset {self.path}: opened read-only, cannot add_episode (use mode='a')")
        arrays, T = self._prepare(episode)
        self._trim()
        n = self.n_steps
        for k, a in arrays.items():  # 1) data
            if k not in self._arrays:
                self._create_array(k, a)
            arr = self._arrays[k]
            arr.resize((n + T, *a.shape[1:]))  # also drops uncommitted data left by a crash
            arr[n:n + T] = a
        i = self.n_episodes  # 2) commit: episode_ends last
        self._ends_arr.resize((i + 1,))
        self._ends_arr[i] = n + T
        self._ends = np.append(self._ends, np.int64(n + T))
        return i

    def copy_from(self, src: ReplayBuffer, frames: int = 0) -> None:
        """Copy every committed episode of ``src`` into this empty dataset, its images in this one's layout.

        The arrays are copied ``frames`` steps at a time (default: a shard, or 1024 steps), so memory holds
        one slice of each key; the episodes are committed together at the end.
        """
        if self.read_only or self.n_episodes:
            raise DatasetError(f"dataset {self.path}: copy_from needs an empty dataset opened for writing")
        step = frames or max(self.layout.shard, math.ceil(1024 / self.layout.chunk) * self.layout.chunk)
        n = src.n_steps
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            arrays, _ = self._prepare({k: src.array(k)[lo:hi] for k in src.keys})
            for k, a in arrays.items():
                if k not in self._arrays:
                    self._create_array(k, a)
                self._arrays[k].resize((hi, *a.shape[1:]))
                self._arrays[k][lo:hi] = a
        ends = src.episode_ends
        self._ends_arr.resize((len(ends),))
        self._ends_arr[:] = ends
        self._ends = ends

    def __repr__(self) -> str:
        return f"ReplayBuffer({str(self.path)!r}, n_episodes={self.n_episodes}, n_steps={self.n_steps})"
