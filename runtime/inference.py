"""Inference workers: the controller hands an observation window over and keeps going; the chunk
comes back later, stamped with the tick of the observation it was predicted from.

- ``ThreadedWorker``: runs the policy in a background thread (real robots, wall clock).
- ``SimulatedLatencyWorker``: runs the policy at once and releases the result after a simulated
  latency (zero, fixed, or the measured wall time of the inference) on the controller's clock, so
  a simulated run behaves like the arm, deterministically.
- ``ProcessWorker``: a checkpoint served from a child process (``ChildProcessWorker`` serves any
  picklable policy loader). A child that dies is reported as a ``WorkerDied`` error naming its pid and
  exit code, never as a bare ``EOFError``.

Every worker takes an optional ``prefix`` (``policy.protocol.ChunkPrefix``: what the controller has
committed, for real-time chunking) with a request and hands it to ``predict_chunk(window, prefix=...)``;
``accepts_prefix`` says whether its policy takes one (a policy without it is called as before).
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from policy.protocol import ChunkPolicy, ChunkPrefix, PolicySpec, accepts_prefix, no_prefix_reason
from runtime.clock import Clock

log = logging.getLogger("runtime.inference")


class WorkerDied(RuntimeError):
    """The inference process is gone: no request can be answered any more (the run must stop)."""


@dataclass
class InferenceResult:
    """A finished request: the chunk (Tp, A) or the error that prevented it."""

    obs_tick: int
    chunk: np.ndarray | None
    error: BaseException | None
    latency_s: float  # from submit to result, on the controller's clock


def _predict(policy: ChunkPolicy, window: Mapping[str, np.ndarray],
             prefix: ChunkPrefix | None = None) -> tuple[np.ndarray | None, BaseException | None]:
    try:
        out = policy.predict_chunk(window) if prefix is None else policy.predict_chunk(window, prefix=prefix)
        chunk = np.asarray(out, dtype=np.float64)
        if chunk.shape != (policy.chunk_len, policy.action_dim):
            raise ValueError(f"policy returned a chunk of shape {chunk.shape}, expected "
                             f"({policy.chunk_len}, {policy.action_dim})")
        return chunk, None
    except Exception as e:  # noqa: BLE001 - any policy failure is reported to the controller, never raised here
        log.exception("inference failed")
        return None, e


class InferenceWorker(ABC):
    """One request at a time: ``submit`` while idle, ``poll`` every tick. ``spec`` describes the policy,
    ``name`` names it in errors, ``accepts_prefix`` says whether it continues a ``ChunkPrefix`` and
    ``no_prefix_reason`` why not (``policy.protocol.no_prefix_reason``)."""

    accepts_prefix: bool = False
    no_prefix_reason: str = ""
    name: str = "the policy"

    def __init__(self, spec: PolicySpec, clock: Clock):
        self.spec, self.clock = spec, clock

    @property
    @abstractmethod
    def busy(self) -> bool: ...

    @abstractmethod
    def submit(self, window: Mapping[str, np.ndarray], obs_tick: int, prefix: ChunkPrefix | None = None) -> None:
        """Start a request from the observation of ``obs_tick``; ``prefix``: what the controller committed."""

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
        self.accepts_prefix, self.name = accepts_prefix(policy), type(policy).__name__
        self.no_prefix_reason = no_prefix_reason(policy)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._request: tuple[dict[str, np.ndarray], int, float, ChunkPrefix | None] | None = None
        self._result: InferenceResult | None = None
        self._running = False
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._running or self._request is not None

    def submit(self, window: Mapping[str, np.ndarray], obs_tick: int, prefix: ChunkPrefix | None = None) -> None:
        with self._lock:
            if self._running or self._request is not None:
                raise RuntimeError("inference worker is busy; submit only when idle")
            self._request = ({k: np.array(v) for k, v in window.items()}, obs_tick, self.clock.now(), prefix)
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
            window, obs_tick, t0, prefix = request
            chunk, err = _predict(self.policy, window, prefix)
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
        self.accepts_prefix, self.name = accepts_prefix(policy), type(policy).__name__
        self.no_prefix_reason = no_prefix_reason(policy)
        if not (latency == "measured" or (isinstance(latency, (int, float)) and latency >= 0)):
            raise ValueError(f"latency must be >= 0 seconds or 'measured', got {latency!r}")
        self.latency = latency
        self._pending: tuple[InferenceResult, float] | None = None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, window: Mapping[str, np.ndarray], obs_tick: int, prefix: ChunkPrefix | None = None) -> None:
        if self._pending is not None:
            raise RuntimeError("inference worker is busy; submit only when idle")
        t_wall = time.perf_counter()
        chunk, err = _predict(self.policy, window, prefix)
        latency = time.perf_counter() - t_wall if self.latency == "measured" else float(self.latency)
        self._pending = (InferenceResult(obs_tick, chunk, err, latency), self.clock.now() + latency)

    def poll(self) -> InferenceResult | None:
        if self._pending is None or self.clock.now() < self._pending[1] - 1e-9:
            return None
        result, self._pending = self._pending[0], None
        return result


def _load_checkpoint(checkpoint: str, device: str, num_threads: int, overrides: dict) -> ChunkPolicy:
    """In the child: ``policy.loader.load_policy`` (an exported folder: onnxruntime, and torch is never imported)."""
    from policy.loader import load_policy

    return load_policy(checkpoint, device=device, num_threads=num_threads, **overrides)


def _serve_process(conn, load: Callable[[], ChunkPolicy]) -> None:
    """Child process: ``load()`` the policy once (answering ``ready`` with whether it accepts a prefix, and
    why not), then answer (window, obs_tick, prefix) requests until None."""
    try:
        policy = load()
        conn.send(("ready", (accepts_prefix(policy), no_prefix_reason(policy))))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("load_error", repr(e)))
        return
    while True:
        request = conn.recv()
        if request is None:
            return
        window, obs_tick, prefix = request
        chunk, err = _predict(policy, window, prefix)
        # time.monotonic is one clock for all processes: the parent measures latency up to here
        conn.send(("result", (obs_tick, chunk, None if err is None else repr(err), time.monotonic())))


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"exit code {code}, killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"exit code {code}"
    return f"exit code {code}"


class ChildProcessWorker(InferenceWorker):
    """Serves ``load()`` (a picklable callable returning a ``ChunkPolicy``) from a spawned child process:
    inference never competes with the control loop for the GIL. ``what`` names the policy in errors.

    For real robots: the clock must be ``time.monotonic`` (``WallClock``), which the child shares.
    """

    def __init__(self, spec: PolicySpec, clock: Clock, load: Callable[[], ChunkPolicy], what: str,
                 start_timeout_s: float = 120.0):
        import multiprocessing as mp

        super().__init__(spec, clock)
        self.name = what
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_process, args=(child, load), name="inference", daemon=True)
        self._proc.start()
        child.close()
        self._pending: float | None = None  # submit time of the request in flight
        self._dead: InferenceResult | None = None  # the death of the child, reported by the next poll
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise RuntimeError(f"inference process did not load {what} within {start_timeout_s} s")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self.close()
            raise RuntimeError(f"inference process exited while loading {what} "
                               f"({_exit_text(self._proc.exitcode)})") from None
        if kind != "ready":
            self.close()
            raise RuntimeError(f"inference process could not load {what}: {payload}")
        self.accepts_prefix, self.no_prefix_reason = bool(payload[0]), str(payload[1])

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Whether the child process is still running."""
        return self._proc.is_alive()

    @property
    def busy(self) -> bool:
        return self._pending is not None or self._dead is not None

    def _died(self, t0: float, during: str) -> InferenceResult:
        self._proc.join(timeout=1.0)  # reap it: the exit code is known once it is joined
        err = WorkerDied(f"inference process (pid {self._proc.pid}) died {during} "
                         f"({_exit_text(self._proc.exitcode)})")
        log.error("%s", err)
        return InferenceResult(-1, None, err, self.clock.now() - t0)

    def submit(self, window: Mapping[str, np.ndarray], obs_tick: int, prefix: ChunkPrefix | None = None) -> None:
        if self.busy:
            raise RuntimeError("inference worker is busy; submit only when idle")
        now = self.clock.now()
        try:
            self._conn.send(({k: np.asarray(v) for k, v in window.items()}, obs_tick, prefix))
        except (OSError, EOFError, ValueError):  # BrokenPipeError, ConnectionResetError, a closed pipe
            self._dead = self._died(now, "before a request")
            return
        self._pending = now

    def poll(self) -> InferenceResult | None:
        if self._dead is not None:
            result, self._dead = self._dead, None
            return result
        if self._pending is None:
            return None
        try:
            if not self._conn.poll():
                if not self._proc.is_alive():  # died mid-request, and its end of the pipe is not closed yet
                    t0, self._pending = self._pending, None
                    return self._died(t0, "mid-request")
                return None
            _, (obs_tick, chunk, err, t_done) = self._conn.recv()
        except (EOFError, OSError):  # the child's end closed: it died mid-request
            t0, self._pending = self._pending, None
            return self._died(t0, "mid-request")
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
            self._proc.join(timeout=5.0)
        self._conn.close()


class ProcessWorker(ChildProcessWorker):
    """Runs a checkpoint, or an exported policy (``policy.onnx``), in a child process (``policy.loader``).
    ``overrides`` go to the loader (num_inference_steps, sampler)."""

    def __init__(self, checkpoint: str, clock: Clock, device: str = "cpu", num_threads: int = 1,
                 start_timeout_s: float = 120.0, **overrides):
        from policy.loader import load_spec

        load = functools.partial(_load_checkpoint, str(checkpoint), device, num_threads, overrides)
        super().__init__(load_spec(checkpoint), clock, load, str(checkpoint), start_timeout_s)
