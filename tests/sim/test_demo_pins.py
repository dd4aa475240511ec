"""The scripted demonstrators make the same demos for the same seeds: collected datasets and benchmark numbers
rely on them. The pins were recorded from the demonstrators before their motion helpers were shared; a change
of the numbers here is a change of every dataset collected from now on (re-record only on purpose)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from sim.demo import DemoConfig
from sim.peek_pick import PeekDemoConfig
from sim.push_t_demo import PushDemoConfig
from sim.rollout import rollout
from sim.tasks import get_task, make_env

DEMO_CONFIGS = {"pick_place": DemoConfig, "push_t": PushDemoConfig, "peek_pick": PeekDemoConfig}


@dataclass(frozen=True)
class Pin:
    """One demo: task, seed, demonstrator config overrides, max_steps; what it did (score, sums over the
    (T, 10) actions, a few rows {index: action})."""

    task: str
    seed: int
    demo: dict[str, Any]
    max_steps: int | None
    steps: int
    success: bool
    score: float
    total: float
    sq: float
    rows: dict[int, list[float]] = field(default_factory=dict)


PINS = [
    Pin('pick_place', 0, {}, None,
        steps=84, success=True, score=1.000000, total=154.960589, sq=186.123611, rows={
            0: [0.35266, -0.00918, 0.22167, 0.997551, 0.069943, 0.0, 0.069943, -0.997551, 0.0, 0.065615],
            42: [0.380372, 0.107624, 0.19711, 0.797078, 0.603876, 0.0, 0.603876, -0.797078, 0.0, 0.0],
            83: [0.465648, 0.26244, 0.219479, 0.797078, 0.603876, 0.0, 0.603876, -0.797078, 0.0, 0.073084],
        }),
    Pin('pick_place', 1, {}, None,
        steps=103, success=True, score=1.000000, total=49.761298, sq=236.414415, rows={
            0: [0.359463, 0.015216, 0.235647, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.067162],
            51: [0.53365, -0.122572, 0.166065, 0.992756, -0.120148, 0.0, -0.120148, -0.992756, 0.0, 0.0],
            102: [0.467334, 0.23878, 0.191798, 0.992756, -0.120148, 0.0, -0.120148, -0.992756, 0.0, 0.070715],
        }),
    Pin('pick_place', 0, {'grasp_offset': (0.03, 0.04)}, None,
        steps=200, success=False, score=0.000000, total=335.562582, sq=424.604903, rows={
            0: [0.35266, -0.00918, 0.22167, 0.997551, 0.069943, 0.0, 0.069943, -0.997551, 0.0, 0.065615],
            100: [0.324087, 0.008049, 0.059771, 0.797057, 0.603904, 0.0, 0.603904, -0.797057, 0.0, 0.076364],
            199: [0.324036, 0.007823, 0.100305, 0.797057, 0.603904, 0.0, 0.603904, -0.797057, 0.0, 0.075836],
        }),
    Pin('push_t', 0, {}, None,
        steps=179, success=True, score=0.965936, total=124.912911, sq=397.315239, rows={
            0: [0.255695, -0.008426, 0.081809, 0.996625, 0.082085, 0.0, 0.082085, -0.996625, 0.0, 0.0],
            89: [0.411444, 0.031283, 0.026205, 0.996625, 0.082085, 0.0, 0.082085, -0.996625, 0.0, 0.0],
            178: [0.537235, 0.026272, 0.083479, 0.996625, 0.082085, 0.0, 0.082085, -0.996625, 0.0, 0.0],
        }),
    Pin('push_t', 1, {}, None,
        steps=163, success=True, score=0.959282, total=92.353041, sq=371.880439, rows={
            0: [0.250741, 0.017696, 0.085871, 0.999975, 0.007093, 0.0, 0.007093, -0.999975, 0.0, 0.0],
            81: [0.585565, 0.071531, 0.018449, 0.999975, 0.007093, 0.0, 0.007093, -0.999975, 0.0, 0.0],
            162: [0.400267, -0.041119, 0.111943, 0.999975, 0.007093, 0.0, 0.007093, -0.999975, 0.0, 0.0],
        }),
    Pin('push_t', 0, {'finish_overlap': (0.8, 0.85)}, 150,
        steps=150, success=False, score=0.865025, total=105.286577, sq=332.479151, rows={
            0: [0.255695, -0.008426, 0.081809, 0.996625, 0.082085, 0.0, 0.082085, -0.996625, 0.0, 0.0],
            75: [0.554301, 0.011456, 0.01825, 0.996625, 0.082085, 0.0, 0.082085, -0.996625, 0.0, 0.0],
            149: [0.488721, -0.038871, 0.087982, 0.996625, 0.082085, 0.0, 0.082085, -0.996625, 0.0, 0.0],
        }),
    Pin('peek_pick', 0, {}, None,
        steps=109, success=True, score=1.000000, total=78.332871, sq=243.204350, rows={
            0: [0.353887, -0.013717, 0.222005, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.08],
            54: [0.423312, -0.087147, 0.189662, 0.998957, 0.045668, 0.0, 0.045668, -0.998957, 0.0, 0.0],
            108: [0.470287, 0.243304, 0.238135, 0.998957, 0.045668, 0.0, 0.045668, -0.998957, 0.0, 0.079376],
        }),
    Pin('peek_pick', 1, {}, None,
        steps=111, success=True, score=1.000000, total=84.668805, sq=250.977280, rows={
            0: [0.355121, 0.012956, 0.228537, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.08],
            55: [0.520765, -0.037379, 0.099909, 0.998652, 0.051911, 0.0, 0.051911, -0.998652, 0.0, 0.0],
            110: [0.45501, 0.232134, 0.175717, 0.998652, 0.051911, 0.0, 0.051911, -0.998652, 0.0, 0.07928],
        }),
]


@pytest.fixture(scope="module")
def envs():
    made = {task: make_env(task, {"image_height": 16, "image_width": 16}) for task in DEMO_CONFIGS}
    yield made
    for env in made.values():
        env.close()


@pytest.mark.parametrize("pin", PINS, ids=lambda p: f"{p.task}-{p.seed}-{'-'.join(p.demo) or 'default'}")
def test_demonstrator_makes_the_pinned_demo(envs, pin):
    env = envs[pin.task]
    demo = get_task(pin.task).demo_cls(env, DEMO_CONFIGS[pin.task](**pin.demo))
    r = rollout(env, pin.seed, demo=demo, max_steps=pin.max_steps, keep_obs=False)
    actions = r["actions"].astype(np.float64)
    assert (r["steps"], r["success"]) == (pin.steps, pin.success)
    assert r["score"] == pytest.approx(pin.score, abs=1e-6)
    for i, row in pin.rows.items():
        np.testing.assert_allclose(actions[i], row, atol=2e-6, err_msg=f"action {i}")
    assert actions.sum() == pytest.approx(pin.total, abs=1e-5)
    assert (actions * actions).sum() == pytest.approx(pin.sq, abs=1e-5)
