"""``runtime.run`` drives the simulated task through the driver plug-ins, exactly like an arm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from policy.config_utils import from_dict
from policy.data.synthetic import make_synthetic_dataset
from policy.train import train
from runtime.run import InferenceConfig, RunConfig, run
from tests.policy.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("simrun")
    make_synthetic_dataset(root / "d.zarr", n_episodes=3, episode_len=10, image_shape=(32, 32))
    return train(tiny_config(root / "d.zarr", root / "train", steps=2))


def test_run_drives_the_sim_robot_from_the_shipped_configs(tmp_path, checkpoint):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        d = compose(config_name="run", overrides=["robot=sim", "camera=sim", f"checkpoint={checkpoint}",
                                                  "duration_s=1.0", f"log_dir={tmp_path}", "inference.worker=thread",
                                                  "+robot.image_height=32", "+robot.image_width=32"])
    cfg = from_dict(RunConfig, OmegaConf.to_container(d, resolve=True))
    assert isinstance(cfg.inference, InferenceConfig)
    m = run(cfg)
    assert m.stop_reason == "completed" and m.chunks_received >= 1 and m.inference_failures == 0
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["ticks"] == 10
