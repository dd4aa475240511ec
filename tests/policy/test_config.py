"""Configs: the YAML files map onto the dataclasses; wrong keys and broken rules fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from policy.config import Config, PolicyConfig
from policy.config_utils import ConfigError, from_dict, to_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _compose(overrides: list[str]) -> Config:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        dcfg = compose(config_name="train", overrides=overrides)
    data = OmegaConf.to_container(dcfg, resolve=True)
    return from_dict(Config, data)


@pytest.mark.parametrize("policy", ["cpu_default", "resnet18"])
def test_shipped_configs_build(policy):
    cfg = _compose([f"policy={policy}", "train.dataset=x.zarr", "train.out_dir=/tmp/x"])
    assert cfg.train.dataset == "x.zarr"
    assert cfg.policy.chunk_len == 16 and cfg.policy.n_obs_steps == (1 if policy == "cpu_default" else 2)


def test_cpu_default_yaml_matches_dataclass_defaults():
    cfg = _compose(["train.out_dir=/tmp/x"])
    assert cfg.policy == PolicyConfig()


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"policy\.unet\.down_dimz"):
        from_dict(Config, {"policy": {"unet": {"down_dimz": [64]}}})
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        from_dict(Config, {"train": {"stepz": 3}})


def test_unknown_key_on_the_command_line_fails():
    with pytest.raises(Exception, match="stepz"):
        _compose(["+train.stepz=3", "train.out_dir=/tmp/x"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected int"):
        from_dict(Config, {"train": {"batch_size": "big"}})


@pytest.mark.parametrize("policy,match", [
    ({"chunk_len": 18, "unet": {"down_dims": [32, 64, 128]}}, r"chunk_len must be divisible by .* = 4, got 18"),
    ({"objective": {"name": "flow", "sampler": "ddim"}}, r"objective.sampler must be one of \('euler',\)"),
    ({"objective": {"name": "ddpm", "sampler": "ddim", "num_inference_steps": 200}}, r"num_inference_steps"),
    ({"encoder": {"crop_shape": [100, 100]}}, r"crop_shape .* must fit in policy.image_shape"),
    ({"unet": {"down_dims": [60, 120]}}, r"divisible by unet.n_groups"),
    ({"encoder": {"backbone": "vit"}}, r"encoder.backbone must be one of"),
])
def test_rule_violations_name_the_field(policy, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Config, {"policy": policy})


def test_round_trip_through_plain_dicts():
    cfg = _compose(["policy=resnet18", "train.out_dir=/tmp/x", "train.steps=7"])
    assert from_dict(Config, to_dict(cfg)) == cfg


def test_load_plugin_names_the_key_and_what_is_wrong():
    from policy.config_utils import load_plugin, need

    assert load_plugin("policy.config_utils:need", "train.eval_hook") is need
    for spec, why in (("policy.config_utils", "must look like"), ("no_such_module:f", "cannot be loaded"),
                      ("policy.config_utils:nothing_here", "cannot be loaded"),
                      ("policy.config_utils:__doc__", "is not callable")):
        with pytest.raises(ValueError, match=f"^train.eval_hook .*{why}"):
            load_plugin(spec, "train.eval_hook")
