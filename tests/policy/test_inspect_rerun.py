"""``policy.data.inspect DATASET rerun=OUT.rrd``: a recorded episode as a Rerun recording, read back with the SDK."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from policy import keys
from policy.data.inspect import main
from policy.data.replay_buffer import ReplayBuffer
from policy.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("insp") / "d.zarr", n_episodes=3, episode_len=12,
                                  image_shape=(16, 16)).path


def test_an_episode_reads_back_with_its_cameras_poses_and_steps(dataset, tmp_path, capsys):
    pytest.importorskip("rerun", reason='the viz extra: pip install -e ".[viz]"')
    from tests.runtime.test_viz import read_rrd

    out = tmp_path / "ep.rrd"
    main([str(dataset), "episode=1", f"rerun={out}"])
    assert f"episode 1: 12 steps -> {out}" in capsys.readouterr().out
    rows = read_rrd(out)
    ep = ReplayBuffer.open(dataset, "r").get_episode(1, [keys.ACTION, keys.EE_POSE, keys.SCENE_RGB])
    for entity in ("/cameras/scene_rgb", "/cameras/wrist_rgb", "/world/tcp/measured", "/world/tcp/commanded",
                   "/gripper/measured", "/gripper/commanded"):
        assert [t for t, _ in rows[entity]] == list(range(12)), entity
    commanded = np.array([r["Points3D:positions"][0] for _, r in rows["/world/tcp/commanded"]])  # (12, 3)
    np.testing.assert_allclose(commanded, ep[keys.ACTION][:, :3], atol=1e-6)
    measured = np.array([r["Points3D:positions"][0] for _, r in rows["/world/tcp/measured"]])
    np.testing.assert_allclose(measured, ep[keys.EE_POSE][:, :3], atol=1e-6)


def test_a_bad_episode_and_a_missing_sdk_fail_with_a_clear_error(dataset, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main([str(dataset), "episode=7", f"rerun={tmp_path / 'x.rrd'}"])
    assert "episode" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "rerun", None)
    with pytest.raises(SystemExit):
        main([str(dataset), f"rerun={tmp_path / 'x.rrd'}"])
    assert 'pip install -e ".[viz]"' in capsys.readouterr().err
