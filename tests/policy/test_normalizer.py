"""Normalizer: [-1, 1] mapping, constant dimensions, round trip, JSON persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.normalizer import Normalizer


def _data(rng):
    a = rng.uniform(-3, 5, size=(200, 4)).astype(np.float32)
    a[:, 2] = 0.25  # a constant dimension
    return a


def test_maps_training_range_to_minus_one_one_and_round_trips():
    rng = np.random.default_rng(0)
    a = _data(rng)
    n = Normalizer.fit({"action": a})
    x = n.normalize("action", torch.from_numpy(a))
    varying = [0, 1, 3]
    assert torch.allclose(x[:, varying].min(0).values, torch.tensor(-1.0), atol=1e-6)
    assert torch.allclose(x[:, varying].max(0).values, torch.tensor(1.0), atol=1e-6)
    assert torch.all(x[:, 2] == 0)  # constant dimension -> 0, not NaN
    back = n.unnormalize("action", x).numpy()
    np.testing.assert_allclose(back, a, atol=1e-5)


def test_constant_dimension_unnormalizes_to_the_constant():
    n = Normalizer.fit({"action": _data(np.random.default_rng(1))})
    out = n.unnormalize("action", torch.full((3, 4), 0.7))  # network output 0.7 everywhere
    assert torch.all(out[:, 2] == 0.25)
    assert n.varying("action").tolist() == [True, True, False, True]


def test_images_scale_to_minus_one_one():
    img = torch.tensor([0, 255, 51], dtype=torch.uint8)
    assert torch.allclose(Normalizer.normalize_image(img), torch.tensor([-1.0, 1.0, -0.6]))


def test_json_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(2)
    n = Normalizer.fit({"action": _data(rng), "ee_pose": rng.normal(size=(50, 9))})
    n.save(tmp_path / "normalizer.json")
    m = Normalizer.load(tmp_path / "normalizer.json")
    x = torch.randn(5, 4)
    assert torch.equal(n.unnormalize("action", x), m.unnormalize("action", x))
    assert sorted(m.keys()) == ["action", "ee_pose"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="'action'.*NaN"):
        Normalizer.fit({"action": np.array([[0.0], [np.nan]])})
    with pytest.raises(ValueError, match="no data"):
        Normalizer.fit({"action": np.zeros((0, 3))})
    with pytest.raises(KeyError, match="gripper"):
        Normalizer.fit({"action": np.zeros((2, 3))}).normalize("gripper", torch.zeros(1))
