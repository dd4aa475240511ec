"""Fixtures for the hardware-driver tests: an embedded franky-sim Franka server on loopback."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# libfranka's ports are fixed (robot 1337, gripper 1338) and the client cannot pick another, so a "free
# port" means a free loopback *address*: 127.0.0.1 first, then 127.0.0.2 .. 127.0.0.254 (all loopback,
# nothing is reachable from outside the machine).
FRANKA_SIM_HOSTS = ["127.0.0.1"] + [f"127.0.0.{i}" for i in range(2, 255)]


@dataclass
class FrankaSimServer:
    """A running franky-sim FR3 + Franka Hand (MuJoCo physics, 1 kHz, real time) on a loopback address.

    ``ip`` is what ``FrankaConfig(ip=...)`` / ``franky.Robot(ip)`` connects to; ``sim`` (MujocoSimulator),
    ``server`` (SimulationServer) and ``robot`` (the simulated robot model) are franky-sim's objects.
    """

    ip: str
    sim: Any
    server: Any
    robot: Any

    def kill(self) -> None:
        """Simulate a crashed controller: stop stepping and sending state, close every socket."""
        self.server.cleanup()  # ends the 1 kHz loop thread, closes the listening sockets
        for robot_server in self.server.robot_servers:
            robot_server.reset_state()  # drops the client's TCP + UDP connection
            if robot_server.gripper_server is not None:
                robot_server.gripper_server.reset_state()


@pytest.fixture
def franka_sim() -> Iterator[FrankaSimServer]:
    """Start a franky-sim server on a free loopback address; yield a ``FrankaSimServer``; tear it down.

    Skips the test when franky-sim (``pip install franky-sim``) is not installed.
    """
    pytest.importorskip("franky_sim", reason="franky-sim not installed (pip install franky-sim)")
    from franky_sim import SimulationServer
    from franky_sim.mujoco_simulator import MujocoSimulator

    sim = MujocoSimulator(enable_visualization=False)
    sim.init()
    try:
        robot = sim.add_robot()
        server = SimulationServer(sim, hostname_candidates=FRANKA_SIM_HOSTS)
        server.init()  # binds the first free candidate; raises OSError if all 254 are taken
        try:
            if not ipaddress.ip_address(robot.hostname).is_loopback:
                raise RuntimeError(f"franky-sim bound to a non-loopback address {robot.hostname}")
            server.run_async(realtime=True)
            yield FrankaSimServer(ip=robot.hostname, sim=sim, server=server, robot=robot)
        finally:
            server.cleanup()  # idempotent; also after kill()
    finally:
        sim.cleanup()
