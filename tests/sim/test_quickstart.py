"""The README's main job end to end at toy size: collect, train on a time budget, evaluate, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from policy.config_utils import ConfigError, from_dict
from sim.quickstart import QuickstartConfig, quickstart
from tests.policy.conftest import tiny_policy_config

REPO = Path(__file__).resolve().parents[2]


def test_quickstart_collects_trains_evaluates_and_reuses(tmp_path, capsys):
    cfg = QuickstartConfig(task="pick_place", demos=2, train_minutes=0.03, eval_episodes=2, videos=1, workers=1,
                           out_dir=str(tmp_path / "qs"), policy=tiny_policy_config(),
                           train={"batch_size": 8, "num_threads": 1, "progress": False})
    s = quickstart(cfg)
    out = capsys.readouterr().out
    assert "success" in out and "videos:" in out and s["n_episodes"] == 2
    assert (tmp_path / "qs" / "eval" / "eval.json").is_file() and len(s["videos"]) == 1
    state = json.loads((tmp_path / "qs" / "train" / "checkpoints" / "latest" / "train_state.json").read_text())
    assert state["train_seconds"] >= 0.03 * 60 and state["step"] >= 1
    quickstart(cfg)  # a second run reuses the demos and the trained policy
    out = capsys.readouterr().out
    assert "reusing 2 demos" in out and "reusing the trained policy" in out


def test_quickstart_config_from_the_shipped_yaml_and_bad_keys():
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        d = compose(config_name="quickstart", overrides=["train_minutes=5"])
    cfg = from_dict(QuickstartConfig, OmegaConf.to_container(d, resolve=True))
    assert cfg.train_minutes == 5 and cfg.policy.image_keys == ("scene_rgb", "wrist_rgb")
    with pytest.raises(ConfigError, match="unknown task"):
        from_dict(QuickstartConfig, {"task": "stack"})
    with pytest.raises(ConfigError, match="max_minutes"):
        from_dict(QuickstartConfig, {"train": {"max_minutes": 3}})
