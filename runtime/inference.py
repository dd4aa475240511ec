"""Inference workers: the controller hands an observation window over and keeps going; the chunk
comes back later, stamped with the tick of the observation it was predicted from.

- ``ThreadedWorker``: runs the policy in a background thread (real robots, wall clock).
- ``SimulatedLatencyWorker``: runs the policy at once and releases the result after a simulated
  latency (zero, fixed, or the measured wall time of the inference) on the controller's clock, so
  a simulated run behaves like the arm, deterministically.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from policy.protocol import ChunkPolicy, PolicySpec
from runtime.clock import Clock

log = logging.getLogger("runtime.inference")


@dataclass
class InferenceResult:
    """A finished request: the chunk (Tp, A) or the error that prevented it."""

    obs_tick: int
    chunk: np.ndarray | None
    error: BaseException | None
    latency_s: float  # from submit to result, on the controller's clock


def _predict(policy: ChunkPolicy, window: Mapping[str, np.ndarray]) -> tuple[np.ndarray | None, BaseException | None]:
    try:
        chunk = np.asarray(policy.predict_chunk(window), dtype=np.float64)
        if chunk.shape != (policy.chunk_len, policy.action_dim):
            raise ValueError(f"policy returned a chunk of shape {chunk.shape}, expected "
                             f"({policy.chunk_len}, {policy.action_dim})")
        return chunk, None
    except Exception as e:  # noqa: BLE001 - any policy failure is reported to the controller, never raised here
        log.exception("inference failed")
        return None, e


class InferenceWorker(ABC):
    """One request at a time: ``submit`` while idle, ``poll`` every tick. ``spec`` describes the policy."""

    def __init__(self, spec: PolicySpec, clock: Clock):
        self.spec, self.clock = spec, clock

    @property
    @abstractmethod
    def busy(self) -> bool: ...

    @abstractmethod
    def submit(self, window: Mapping[str, np.ndarray], obs_tick: int) -> None: ...

    @abstractmethod
    def poll(self) -> InferenceResult | None:
        """The finished result, once (None while running or idle)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release resources."""


class ThreadedWorker(InferenceWorker):
    """A daemon thread that runs ``predict_chunk``; the loop never waits for it."""

    def __init__(self, policy: ChunkPolicy, clock: Clock):
        super().__init__(PolicySpec.of(policy), clock)
        self.policy = policy
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._request: tuple[dict[str, np.ndarray], int, float] | None = None
        self._result: InferenceResult | None = None
        self._running = False
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._running or self._request is not None

    def submit(self, window: Mapping[str, np.ndarray], obs_tick: int) -> None:
        with self._lock:
            if self._running or self._request is not None:
                raise RuntimeError("inference worker is busy; submit only when idle")
            self._request = ({k: np.array(v) for k, v in window.items()}, obs_tick, self.clock.now())
        self._wake.set()

    def poll(self) -> InferenceResult | None:
        with self._lock:
            result, self._result = self._result, None
        return result

    def _serve(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
                request, self._request = self._request, None
                self._running = request is not None
            if request is None:
                continue
            window, obs_tick, t0 = request
            chunk, err = _predict(self.policy, window)
            with self._lock:
                self._result = InferenceResult(obs_tick, chunk, err, self.clock.now() - t0)
                self._running = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=5.0)


class SimulatedLatencyWorker(InferenceWorker):
    """Runs the policy synchronously at ``submit``; the result is ready ``latency`` later on the clock.

    ``latency``: seconds (0 allowed), or "measured" for the wall time the inference took.
    """

    def __init__(self, policy: ChunkPolicy, clock: Clock, latency: float | str = "measured"):
        super().__init__(PolicySpec.of(policy), clock)
        self.policy = policy
        if not (latency == "measured" or (isinstance(latency, (int, float)) and latency >= 0)):
            raise ValueError(f"latency must be >= 0 seconds or 'measured', got {latency!r}")
        self.latency = latency
        self._pending: tuple[InferenceResult, float] | None = None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, window: Mapping[str, np.ndarray], obs_tick: int) -> None:
        if self._pending is not None:
            raise RuntimeError("inference worker is busy; submit only when idle")
        t_wall = time.perf_counter()
        chunk, err = _predict(self.policy, window)
        latency = time.perf_counter() - t_wall if self.latency == "measured" else float(self.latency)
        self._pending = (InferenceResult(obs_tick, chunk, err, latency), self.clock.now() + latency)

    def poll(self) -> InferenceResult | None:
        if self._pending is None or self.clock.now() < self._pending[1] - 1e-9:
            return None
        result, self._pending = self._pending[0], None
        return result


def _serve_process(conn, checkpoint: str, device: str, num_threads: int, overrides: dict) -> None:
    """Child process: load the checkpoint once, then answer (window, obs_tick) requests until None."""
    import torch

    from policy.policy import Policy

    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        policy = Policy.from_pretrained(checkpoint, device=device, **overrides)
        conn.send(("ready", None))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("load_error", repr(e)))
        return
    while True:
        request = conn.recv()
        if request is None:
            return
        window, obs_tick = request
        chunk, err = _predict(policy, window)
        # time.monotonic is one clock for all processes: the parent measures latency up to here
        conn.send(("result", (obs_tick, chunk, None if err is None else repr(err), time.monotonic())))


class ProcessWorker(InferenceWorker):
    """Runs ``Policy.from_pretrained(checkpoint)`` in a child process: inference never competes with the
    control loop for the GIL. ``overrides`` go to ``from_pretrained`` (num_inference_steps, sampler).

    For real robots: the clock must be ``time.monotonic`` (``WallClock``), which the child shares.
    """

    def __init__(self, checkpoint: str, clock: Clock, device: str = "cpu", num_threads: int = 1,
                 start_timeout_s: float = 120.0, **overrides):
        import multiprocessing as mp

        from policy.checkpoint import load_spec

        super().__init__(load_spec(checkpoint), clock)
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_process, args=(child, str(checkpoint), device, num_threads, overrides),
                                 name="inference", daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise RuntimeError(f"inference process did not load {checkpoint} within {start_timeout_s} s")
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            self.close()
            raise RuntimeError(f"inference process exited while loading {checkpoint} "
                               f"(exit code {self._proc.exitcode})") from None
        if kind != "ready":
            self.close()
            raise RuntimeError(f"inference process could not load {checkpoint}: {payload}")
        self._pending: float | None = None  # submit time of the request in flight

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, window: Mapping[str, np.ndarray], obs_tick: int) -> None:
        if self._pending is not None:
            raise RuntimeError("inference worker is busy; submit only when idle")
        if not self._proc.is_alive():
            raise RuntimeError(f"inference process died (exit code {self._proc.exitcode})")
        self._conn.send(({k: np.asarray(v) for k, v in window.items()}, obs_tick))
        self._pending = self.clock.now()

    def poll(self) -> InferenceResult | None:
        if self._pending is None:
            return None
        if not self._conn.poll():
            if not self._proc.is_alive():  # died mid-request: report it as a failed inference
                t0, self._pending = self._pending, None
                err = RuntimeError(f"inference process died (exit code {self._proc.exitcode})")
                return InferenceResult(-1, None, err, self.clock.now() - t0)
            return None
        _, (obs_tick, chunk, err, t_done) = self._conn.recv()
        t0, self._pending = self._pending, None
        return InferenceResult(obs_tick, chunk, None if err is None else RuntimeError(err), t_done - t0)

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._proc.join(timeout=5.0)
        if self._proc.is_alive():
            self._proc.kill()
