"""How a dataset's arrays are stored: dtypes, codecs, the image chunk layout, and the checks that name
what is wrong with a dataset (``DatasetError``). Used by ``ReplayBuffer``; ``policy.data.replay_buffer``
re-exports the public names, and the rest of the project imports them from there."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from zarr.codecs import BloscCodec

from policy.keys import TIMESTAMP

LOWDIM_CHUNK = 1024  # steps per chunk for non-image arrays


@dataclass(frozen=True)
class ImageLayout:
    """How image arrays are chunked in time: ``chunk`` frames per chunk, inside zarr v3 shards of ``shard``
    frames (0: no sharding, one file per chunk). The default, one frame per file, suits recording and
    random access; ``STREAM_LAYOUT`` suits training by streaming (``policy.data.stream``)."""

    chunk: int = 1
    shard: int = 0

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise ValueError(f"image layout: chunk must be >= 1 frame, got {self.chunk}")
        if self.shard < 0 or (self.shard and self.shard % self.chunk):
            raise ValueError(f"image layout: shard must be 0 or a multiple of chunk ({self.chunk}), got {self.shard}")


STREAM_LAYOUT = ImageLayout(chunk=64, shard=1024)


def blosc_codec(image: bool) -> BloscCodec:
    """A fresh Blosc zstd codec: bit shuffle for uint8 frames, byte shuffle for low-dim arrays."""
    return BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle" if image else "shuffle")


class DatasetError(ValueError):
    """A dataset is missing, malformed, or an episode does not fit it."""


def is_image_array(arr: np.ndarray) -> bool:
    """True for (T, H, W, 3) uint8 arrays."""
    return arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3


def storage_dtype(key: str, dtype: np.dtype) -> np.dtype:
    """float64 for ``timestamp``, float32 for other floats, the input dtype otherwise."""
    if dtype.kind == "f":
        return np.dtype(np.float64) if key == TIMESTAMP else np.dtype(np.float32)
    if dtype.kind not in "biu":
        raise DatasetError(f"key '{key}': unsupported dtype {dtype} (expected bool, integer or float)")
    return dtype


def _frame_str(shape: tuple[int, ...], dtype: np.dtype | str) -> str:
    """Format a per-frame shape and dtype as e.g. '(T, 9) float32'."""
    dims = ", ".join(["T", *(str(d) for d in shape)])
    return f"({dims}{',' if not shape else ''}) {np.dtype(dtype)}"


def check_spec(where: str, found: Mapping[str, tuple[tuple[int, ...], np.dtype]],
               spec: Mapping[str, tuple[tuple[int, ...], np.dtype | str]]) -> None:
    """Check ``found`` per-frame ``key -> (shape, dtype)`` against ``spec``; DatasetError naming the key."""
    for key, (shape, dtype) in spec.items():
        expected = _frame_str(tuple(shape), dtype)
        if key not in found:
            raise DatasetError(f"{where}: missing key '{key}' (expected shape {expected}); found keys: {sorted(found)}")
        f_shape, f_dtype = found[key]
        if tuple(f_shape) != tuple(shape) or np.dtype(f_dtype) != np.dtype(dtype):
            raise DatasetError(f"{where}: key '{key}' expected {expected}, found {_frame_str(tuple(f_shape), f_dtype)}")
