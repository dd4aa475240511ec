"""Software e-stop: one ``threading.Event`` set by SIGINT/SIGTERM, a key (ESC or ``q``), or code.

This is a *software* stop: the loop that owns the robot sees ``EStop.event`` set at its next tick and
calls ``robot.stop()`` in its ``finally:``. It does not replace the arm's hardware e-stop button.

Usage with the policy controller (which takes a ``stop_event``)::

    with EStop() as estop:                     # SIGINT/SIGTERM set it; old handlers restored on exit
        estop.listen_keys()                    # optional: ESC or q on the terminal set it too
        Controller(..., stop_event=estop.event).run(duration_s=60)

A second SIGINT/SIGTERM while already stopping raises ``KeyboardInterrupt`` in the main thread, to get
out of a loop stuck in a blocking driver call (its ``finally:`` still stops the robot).

``KeyListener`` (also used by the teleop ``KeyboardDevice``) reads key presses from a terminal in a
background thread in cbreak mode (no Enter needed, no echo; Ctrl-C still raises SIGINT) and restores
the terminal on ``stop()``. Only one listener should read a terminal at a time. After a SIGKILL the
terminal may stay in cbreak mode: ``stty sane`` fixes it.
"""

from __future__ import annotations

import codecs
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from runtime.drivers.base import DriverError

log = logging.getLogger("runtime.estop")

_ESCAPES = {  # terminal escape sequences -> key names (CSI "ESC [" and SS3 "ESC O" forms)
    "A": "UP", "B": "DOWN", "C": "RIGHT", "D": "LEFT",
}
_NAMES = {" ": "SPACE", "\r": "ENTER", "\n": "ENTER", "\t": "TAB", "\x7f": "BACKSPACE"}


def parse_keys(data: str) -> list[str]:
    """Split raw terminal input into key tokens.

    Printable characters become themselves (letters lower-cased: caps lock must not change the
    bindings); arrows become ``UP``/``DOWN``/``LEFT``/``RIGHT``; space ``SPACE``, Enter ``ENTER``; a
    lone ESC (or ESC followed by something that is not an escape sequence) ``ESC``; other escape
    sequences (function keys) ``UNKNOWN``. Control characters are dropped.
    """
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        ch = data[i]
        if ch == "\x1b":
            if i + 1 < n and data[i + 1] in "[O":  # CSI / SS3: parameters, then a final byte @..~
                j = i + 2
                while j < n and not ("@" <= data[j] <= "~"):
                    j += 1
                if j < n:
                    out.append(_ESCAPES.get(data[j], "UNKNOWN") if j == i + 2 else "UNKNOWN")
                    i = j + 1
                    continue
            out.append("ESC")  # a lone ESC (a split sequence reads as ESC: errs on the safe side)
            i += 1
            continue
        if ch in _NAMES:
            out.append(_NAMES[ch])
        elif ch.isprintable():
            out.append(ch.lower())
        i += 1
    return out


class KeyListener:
    """Calls ``on_key(token)`` (see ``parse_keys``) from a background thread for each key pressed on the
    terminal ``fd`` (default stdin). ``start()`` raises DriverError when ``fd`` is not a terminal."""

    def __init__(self, on_key: Callable[[str], None], fd: int | None = None, poll_s: float = 0.05):
        self.on_key = on_key
        self.fd = fd
        self.poll_s = poll_s  # s, how often the thread checks for stop()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: list[Any] | None = None  # termios attributes to restore

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> KeyListener:
        """Put the terminal in cbreak mode and start the reader thread."""
        import termios
        import tty

        if self._thread is not None:
            return self
        if self.fd is None:
            try:
                self.fd = sys.stdin.fileno()
            except (AttributeError, ValueError, OSError) as e:
                raise DriverError(f"keyboard: stdin has no file descriptor ({e}); run in a terminal") from e
        if not os.isatty(self.fd):
            raise DriverError(f"keyboard: file descriptor {self.fd} is not a terminal; run in a terminal "
                              "(not through a pipe), or feed keys programmatically")
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="key-listener", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], self.poll_s)
                if not ready:
                    continue
                raw = os.read(self.fd, 64)
            except OSError as e:
                log.error("keyboard: reading the terminal failed: %r; key listener stopped", e)
                return
            if not raw:  # end of input
                return
            for token in parse_keys(decoder.decode(raw)):
                try:
                    self.on_key(token)
                except Exception as e:  # noqa: BLE001 - a bad callback must not kill the listener
                    log.error("keyboard: key handler failed on %r: %r", token, e)

    def stop(self) -> None:
        """Stop the thread and restore the terminal (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._saved is not None and self.fd is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def __enter__(self) -> KeyListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EStop:
    """A stop request shared by threads and signal handlers: ``event`` is set once, with a ``reason``."""

    def __init__(self, event: threading.Event | None = None):
        self.event = event or threading.Event()
        self._flag = False  # set synchronously, also inside signal handlers
        self._reason: str | None = None
        self._previous: dict[int, Any] = {}
        self._listener: KeyListener | None = None

    @property
    def triggered(self) -> bool:
        """True once a stop was requested."""
        return self._flag or self.event.is_set()

    @property
    def reason(self) -> str | None:
        """Why the stop was requested first (e.g. ``"signal SIGTERM"``, ``"key ESC"``); None if not."""
        if self._reason is None and self.event.is_set():
            return "event set"
        return self._reason

    def trigger(self, reason: str) -> None:
        """Request a stop (thread-safe; the first reason is kept)."""
        if self._reason is None:
            self._reason = reason
        if not self._flag:
            log.warning("e-stop: %s", reason)
        self._flag = True
        self.event.set()

    # ---------------------------------------------------------------- signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._flag:
            raise KeyboardInterrupt(f"{name} while already stopping")
        if self._reason is None:
            self._reason = f"signal {name}"
        self._flag = True
        # Event.set takes a lock that the interrupted main thread may hold (inside Event.wait/set):
        # set it from a helper thread so the handler can never deadlock.
        try:
            threading.Thread(target=self.event.set, name="estop-set", daemon=True).start()
        except RuntimeError:  # no new threads at interpreter shutdown
            self.event.set()

    def install_signal_handlers(self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> EStop:
        """Make ``signals`` trigger the stop; the previous handlers are restored by ``uninstall()``.
        Main thread only (a Python rule for signal handlers)."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("EStop.install_signal_handlers must be called from the main thread")
        for s in signals:
            if s not in self._previous:
                self._previous[s] = signal.signal(s, self._on_signal)
        return self

    # ---------------------------------------------------------------- keys

    def on_key(self, token: str, keys: Iterable[str] = ("ESC", "q")) -> bool:
        """Trigger if ``token`` is one of ``keys``; returns whether it did (for key handlers)."""
        if token in tuple(keys):
            self.trigger(f"key {token}")
            return True
        return False

    def listen_keys(self, keys: Iterable[str] = ("ESC", "q"), fd: int | None = None) -> KeyListener:
        """Start a terminal ``KeyListener`` on ``fd`` (default stdin) whose ``keys`` trigger the stop.
        Not needed with the teleop ``KeyboardDevice``, which handles ESC itself."""
        wanted = tuple(keys)
        if self._listener is None:
            self._listener = KeyListener(lambda t: self.on_key(t, wanted), fd).start()
        return self._listener

    # ---------------------------------------------------------------- lifecycle

    def uninstall(self) -> None:
        """Restore the previous signal handlers and stop the key listener (idempotent)."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> EStop:
        return self.install_signal_handlers()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
