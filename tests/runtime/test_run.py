"""``runtime.run``: a checkpoint driven on the fake robot through the same code path as a real arm."""

from __future__ import annotations

import json
import sys

import pytest

from policy.data.synthetic import make_synthetic_dataset
from policy.train import train
from runtime.run import InferenceConfig, RunConfig, run
from tests.policy.conftest import tiny_config

CAMS = {"scene_rgb": {"type": "fake", "height": 32, "width": 32},
        "wrist_rgb": {"type": "fake", "height": 32, "width": 32}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    make_synthetic_dataset(root / "d.zarr", n_episodes=3, episode_len=10, image_shape=(32, 32))
    return train(tiny_config(root / "d.zarr", root / "train", steps=2))


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_run_on_the_fake_robot_writes_metrics(tmp_path, checkpoint, worker):
    cfg = RunConfig(checkpoint=str(checkpoint), cameras=CAMS, duration_s=1.5, log_dir=str(tmp_path),
                    inference=InferenceConfig(worker=worker))
    m = run(cfg)
    assert m.stop_reason == "completed" and m.chunks_received >= 1 and m.inference_failures == 0
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    # a loaded machine may skip ticks (counted as overruns) but never runs more or fewer than 15 in all
    assert rec["ticks"] + rec["overruns"] == 15
    assert rec["checkpoint"] == str(checkpoint) and rec["stop_reason"] == "completed"


def test_dry_run_logs_commands_and_leaves_the_arm_alone(tmp_path, checkpoint):
    cfg = RunConfig(checkpoint=str(checkpoint), cameras=CAMS, duration_s=1.0, log_dir=str(tmp_path),
                    dry_run=True, inference=InferenceConfig(worker="thread"))
    m = run(cfg)
    lines = (tmp_path / "commands.jsonl").read_text().splitlines()
    # one command per tick run; ticks skipped on a loaded machine are counted as overruns instead
    assert len(lines) == 10 - m.overruns and len(lines) >= 1 and len(json.loads(lines[0])["command"]) == 10


def test_missing_camera_and_bad_config_are_named(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="wrist_rgb"):
        run(RunConfig(checkpoint=str(checkpoint), cameras={"scene_rgb": CAMS["scene_rgb"]}, log_dir=str(tmp_path),
                      inference=InferenceConfig(worker="thread")))
    with pytest.raises(ValueError, match="checkpoint is empty"):
        RunConfig()
    with pytest.raises(ValueError, match=r"unknown robot setting\(s\) \['speed'\]"):
        run(RunConfig(checkpoint=str(checkpoint), robot={"type": "fake", "speed": 1}, cameras=CAMS,
                      log_dir=str(tmp_path), inference=InferenceConfig(worker="thread")))


def test_a_fault_is_written_to_the_metrics_and_nothing_moves(tmp_path, checkpoint):
    robot = {"type": "fake", "start_pose": [0.95, 0.0, 0.3, 1, 0, 0, 0, 1, 0]}  # x beyond workspace_max 0.8
    cfg = RunConfig(checkpoint=str(checkpoint), robot=robot, cameras=CAMS, duration_s=1.0, log_dir=str(tmp_path),
                    dry_run=True, inference=InferenceConfig(worker="thread"))
    m = run(cfg)
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert m.stop_reason == rec["stop_reason"] == "fault" and "x = 0.9500 m is outside [-0.8, 0.8] m" in rec["error"]
    assert rec["interventions"] == {"start_outside_workspace": 1}
    assert not (tmp_path / "commands.jsonl").exists() or not (tmp_path / "commands.jsonl").read_text()


def test_display_records_the_run_and_without_the_sdk_nothing_starts(tmp_path, checkpoint, monkeypatch):
    pytest.importorskip("rerun", reason='the viz extra: pip install -e ".[viz]"')
    from runtime.viz import DisplayUnavailable
    from tests.runtime.test_viz import read_rrd

    rrd = tmp_path / "run.rrd"
    cfg = RunConfig(checkpoint=str(checkpoint), cameras=CAMS, duration_s=1.0, log_dir=str(tmp_path),
                    display=f"rerun+save:{rrd}", inference=InferenceConfig(worker="thread"))
    m = run(cfg)
    rows = read_rrd(rrd)
    assert m.stop_reason == "completed" and len(rows["/timing/tick_jitter_ms"]) == len(m.tick_jitter_s)
    assert len(rows["/cameras/scene_rgb"]) == len(rows["/cameras/wrist_rgb"]) == len(m.tick_jitter_s)
    assert len(rows["/world/chunk"]) == m.chunks_received >= 1
    monkeypatch.setitem(sys.modules, "rerun", None)  # the viz extra not installed
    with pytest.raises(DisplayUnavailable, match=r'pip install -e "\.\[viz\]"'):
        run(cfg)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1  # the second run never started
    with pytest.raises(ValueError, match="display"):
        RunConfig(checkpoint="x", display="rerun+save:")
