"""sim.evaluate: episodes through the runtime controller, seeds, statistics, videos, evaluation in training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policy.config_utils import ConfigError, from_dict
from policy.train import Trainer, train
from sim.collect import CollectConfig, collect, read_seeds
from sim.evaluate import EvalConfig, eval_seeds, evaluate, run_episode
from sim.report import summarize, wilson_interval
from sim.rollout import rollout
from tests.policy.conftest import tiny_config
from tests.sim.test_drivers import ReplayPolicy

H = W = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny checkpoint trained for a few steps on 3 collected 32x32 pick-and-place demos (seeds 0-2)."""
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "demos.zarr"
    collect(from_dict(CollectConfig, {"task": "pick_place", "episodes": 3, "out": str(data), "workers": 1,
                                      "image_height": H, "image_width": W}), progress=False)
    ckpt = train(tiny_config(data, root / "run", steps=3))
    return data, ckpt


def test_wilson_interval_matches_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(45, 50) == pytest.approx((0.7864, 0.9565), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)


def test_eval_seeds_skip_the_collection_seeds():
    assert eval_seeds(0, 4, {0, 1, 3}) == [2, 4, 5, 6]
    assert eval_seeds(10, 2, set()) == [10, 11]


def test_bad_config_values_name_the_field():
    with pytest.raises(ConfigError, match="latency"):
        from_dict(EvalConfig, {"checkpoint": "x", "latency": "fast"})
    with pytest.raises(ConfigError, match="episodes"):
        from_dict(EvalConfig, {"checkpoint": "x", "episodes": 0})
    with pytest.raises(ConfigError, match="checkpoint"):
        from_dict(EvalConfig, {})
    with pytest.raises(ConfigError, match="unknown config key.*latancy"):
        from_dict(EvalConfig, {"checkpoint": "x", "latancy": 0})
    assert from_dict(EvalConfig, {"checkpoint": "x", "latency": 0.05}).latency_s == 0.05
    assert from_dict(EvalConfig, {"checkpoint": "x", "latency": "zero"}).latency_s == 0.0


def test_an_episode_stops_at_the_first_success(env):
    """A policy replaying a demo through the controller succeeds; the episode ends at that tick."""
    from runtime.clock import SimClock

    demo = rollout(env, 5, keep_obs=False)
    cfg = from_dict(EvalConfig, {"checkpoint": "x", "latency": "zero", "max_steps": 200})
    clock = SimClock()
    rec = run_episode(env, ReplayPolicy(demo["actions"], clock), cfg, seed=5, record=True, clock=clock)
    assert rec["success"] and rec["score"] == 1.0 and rec["error"] is None
    assert rec["steps"] < 200 and rec["underruns"] == 0
    assert rec["frames"].shape == (rec["steps"] + 1, 96, 192, 3)
    assert env.cube_in_bin() and env._steps == rec["steps"]  # no step after the success


def test_evaluate_end_to_end_on_a_tiny_checkpoint(trained, tmp_path):
    data, ckpt = trained
    cfg = from_dict(EvalConfig, {"checkpoint": str(ckpt), "episodes": 3, "seed": 1, "workers": 2, "videos": 1,
                                 "latency": "measured", "max_steps": 12, "out": str(tmp_path / "ev"),
                                 "progress": False})
    s = evaluate(cfg)
    assert s["task"] == "pick_place" and s["n_episodes"] == 3
    seeds = [r["seed"] for r in s["episodes"]]
    assert seeds == [3, 4, 5] and not set(seeds) & set(read_seeds(data))  # 1, 2 were used to collect
    assert all(r["steps"] == 12 and r["error"] is None and r["chunks"] >= 1 for r in s["episodes"])
    assert 0.0 <= s["success_rate_ci95"][0] <= s["success_rate"] <= s["success_rate_ci95"][1] <= 1.0
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["n_episodes"] == 3 and len(saved["episodes"]) == 3
    assert saved["controller"]["execution"] == "naive" and saved["controller"]["replan"] == "half"  # how it ran
    assert len(s["videos"]) == 1
    import imageio.v3 as iio

    video = iio.imread(s["videos"][0])
    assert video.shape == (13, 2 * H, 2 * 2 * W, 3)  # 12 steps + the reset frame, scale 2, scene | wrist


def test_an_exported_policy_is_evaluated_and_its_noise_is_seeded_per_episode(trained, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e \".[deploy]\")")
    from policy.export import ExportConfig, export_policy

    _, ckpt = trained
    exported = export_policy(ExportConfig(checkpoint=str(ckpt), out=str(tmp_path / "exported")))
    base = {"checkpoint": str(exported), "episodes": 2, "workers": 1, "videos": 0, "latency": "zero",
            "max_steps": 12, "progress": False}
    runs = [evaluate(from_dict(EvalConfig, {**base, "out": str(tmp_path / f"ev{i}")})) for i in range(2)]
    s = runs[0]
    assert s["task"] == "pick_place" and s["checkpoint"] == str(exported) and s["n_episodes"] == 2
    assert all(r["steps"] == 12 and r["error"] is None and r["chunks"] >= 2 for r in s["episodes"])

    def outcome(summary):  # all but the wall time of inference
        return [{k: v for k, v in r.items() if k != "inference_ms_mean"} for r in summary["episodes"]]

    assert outcome(runs[0]) == outcome(runs[1])  # the same seeds, the same chunks: the noise is seeded
    assert outcome(runs[0])[0] != outcome(runs[0])[1]


def test_training_keeps_the_best_evaluated_checkpoint(trained, tmp_path, monkeypatch):
    data, _ = trained
    results = iter([0.2, 0.6, 0.4])
    seen = []

    def fake_eval(checkpoint, **args):
        seen.append(json.loads((checkpoint / "meta.json").read_text())["step"])
        return {"success_rate": next(results), "mean_score": 0.5}

    monkeypatch.setattr("policy.train.load_plugin", lambda spec, what: fake_eval)
    cfg = tiny_config(data, tmp_path / "run", steps=6, eval_every=2, ckpt_every=100)
    ckpt = Trainer(cfg).run()
    assert seen == [2, 4, 6]
    best = ckpt.with_name("best")
    assert json.loads((best / "meta.json").read_text())["step"] == 4
    assert json.loads((best / "eval.json").read_text())["success_rate"] == 0.6
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["eval_success_rate"] for r in log if "eval_success_rate" in r] == [0.2, 0.6, 0.4]


def test_training_evaluates_with_the_simulator_hook(trained, tmp_path):
    data, _ = trained
    cfg = tiny_config(data, tmp_path / "run", steps=2, eval_every=2,
                      eval_args={"episodes": 2, "workers": 1, "max_steps": 5, "latency": "zero", "videos": 0})
    ckpt = train(cfg)
    best = json.loads((ckpt.with_name("best") / "eval.json").read_text())
    assert best["n_episodes"] == 2 and best["step"] == 2
    assert (tmp_path / "run" / "eval" / "step_000002" / "eval.json").is_file()


def test_training_stops_on_its_time_budget(trained, tmp_path):
    data, _ = trained
    ckpt = train(tiny_config(data, tmp_path / "run", steps=1000, max_minutes=1e-6))
    assert json.loads((ckpt / "meta.json").read_text())["step"] == 1
    with pytest.raises(ConfigError, match="eval_hook"):
        from_dict(type(tiny_config(data, tmp_path).train), {"eval_every": 5, "eval_hook": "nocolon"})


def test_evaluation_uses_the_task_overrides_the_demos_were_collected_with(trained, tmp_path):
    """Demos collected with a moved scene camera are evaluated with that camera, not the default one."""
    import shutil

    from sim.evaluate import resolve_task

    data, ckpt = trained
    moved = tmp_path / "moved.zarr"
    collect(from_dict(CollectConfig, {"task": "pick_place", "episodes": 1, "out": str(moved), "workers": 1,
                                      "image_height": H, "image_width": W,
                                      "env": {"scene_camera_fovy": 40.0, "max_episode_steps": 150}}),
            progress=False)
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["dataset"]["path"] = str(moved)
    (copy / "meta.json").write_text(json.dumps(meta))

    def env_of(**args):
        return resolve_task(from_dict(EvalConfig, {"checkpoint": str(copy), **args}))[3]

    assert env_of() == {"scene_camera_fovy": 40.0, "max_episode_steps": 150}
    assert env_of(env={"scene_camera_fovy": 50.0}) == {"scene_camera_fovy": 50.0, "max_episode_steps": 150}
    assert env_of(task="push_t", env={"max_episode_steps": 9}) == {"max_episode_steps": 9}  # another task: not
    assert resolve_task(from_dict(EvalConfig, {"checkpoint": str(ckpt)}))[3] == {}  # demos without overrides
    s = evaluate(from_dict(EvalConfig, {"checkpoint": str(copy), "episodes": 1, "workers": 1, "videos": 0,
                                        "max_steps": 3, "out": str(tmp_path / "ev"), "progress": False}))
    assert s["env"] == {"scene_camera_fovy": 40.0, "max_episode_steps": 150}
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["env"] == s["env"]


def test_bad_task_overrides_and_a_broken_checkpoint_fail_with_a_clear_error(trained, tmp_path):
    import shutil

    from policy.checkpoint import CheckpointError

    _, ckpt = trained
    with pytest.raises(ConfigError, match="env.*cube_sise"):
        evaluate(from_dict(EvalConfig, {"checkpoint": str(ckpt), "episodes": 1, "env": {"cube_sise": 0.02},
                                        "out": str(tmp_path / "a"), "progress": False}))
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):  # raised in the worker, reported by the parent (no respawn loop)
        evaluate(from_dict(EvalConfig, {"checkpoint": str(broken), "episodes": 2, "workers": 2,
                                        "out": str(tmp_path / "b"), "progress": False}))


def test_cpu_time_budget_counts_process_cpu_time(trained, tmp_path):
    data, _ = trained
    ckpt = train(tiny_config(data, tmp_path / "run", steps=1000, max_minutes=0.01, budget_clock="cpu"))
    state = json.loads((ckpt / "train_state.json").read_text())
    assert 0.6 <= state["train_seconds"] < 5.0 and 1 <= state["step"] < 1000
    with pytest.raises(ConfigError, match="budget_clock"):
        from_dict(type(tiny_config(data, tmp_path).train), {"budget_clock": "gpu"})


class FaultOnSeed:
    """Replays a demo, except on seed ``bad``, where every chunk is NaN (held, then a fault after
    ``max_rejected_actions`` rejected actions in a row)."""

    def __init__(self, actions, clock, bad: int):
        self.replay, self.bad, self.seed = ReplayPolicy(actions, clock), bad, None
        for name in ("n_obs_steps", "chunk_len", "action_dim", "obs_keys"):
            setattr(self, name, getattr(self.replay, name))

    def predict_chunk(self, window):
        chunk = self.replay.predict_chunk(window)
        return np.full_like(chunk, np.nan) if self.seed == self.bad else chunk


def test_a_faulted_episode_is_recorded_as_failed_and_evaluation_goes_on(env):
    """A policy that faults on one seed: that episode is a failure naming its reason; the next one runs."""
    from runtime.clock import SimClock

    demo = rollout(env, 5, keep_obs=False)
    cfg = from_dict(EvalConfig, {"checkpoint": "x", "latency": "zero", "max_steps": 200,
                                 "controller": {"max_rejected_actions": 4}})
    records = []
    for seed in (5, 5):
        clock = SimClock()
        policy = FaultOnSeed(demo["actions"], clock, bad=5 if not records else -1)
        policy.seed = seed
        records.append(run_episode(env, policy, cfg, seed=seed, clock=clock))
    faulted, fine = records
    assert not faulted["success"] and faulted["stop_reason"] == "fault"
    assert "rejected" in faulted["error"] and faulted["interventions"]["nonfinite_action"] >= 4
    assert faulted["steps"] < 20  # stopped at the fault, not run to max_steps
    assert fine["success"] and fine["error"] is None and fine["stop_reason"] == "stop_requested"
    assert summarize(records)["faults"] == 1 and summarize(records)["successes"] == 1


def test_a_returned_fault_counts_as_failed_too(env, monkeypatch):
    """A controller that returns its metrics with stop_reason "fault" (instead of raising) fails the episode."""
    from runtime.clock import SimClock
    from runtime.controller import Controller

    def run_and_return(self, max_ticks=None, duration_s=None):
        self.metrics.stop_reason, self.metrics.error = "driver_error", "robot: link down"
        return self.metrics

    monkeypatch.setattr(Controller, "run", run_and_return)
    clock = SimClock()
    cfg = from_dict(EvalConfig, {"checkpoint": "x", "latency": "zero", "max_steps": 20})
    rec = run_episode(env, ReplayPolicy(rollout(env, 5, keep_obs=False)["actions"], clock), cfg, seed=5, clock=clock)
    assert (rec["success"], rec["stop_reason"], rec["error"]) == (False, "driver_error", "robot: link down")


def test_evaluate_writes_the_faults_into_eval_json(trained, tmp_path):
    """Every inference slower than the timeout: each episode fails with its reason, and all are recorded."""
    _, ckpt = trained
    s = evaluate(from_dict(EvalConfig, {"checkpoint": str(ckpt), "episodes": 2, "workers": 1, "videos": 0,
                                        "latency": 0.5, "controller": {"inference_timeout_s": 0.2},
                                        "max_steps": 30, "out": str(tmp_path / "ev"), "progress": False}))
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["faults"] == 2 and saved["successes"] == 0 and len(saved["episodes"]) == 2
    assert all(r["stop_reason"] == "fault" and "timeout" in r["error"].lower() for r in s["episodes"])


def test_the_shipped_configs_take_the_execution_keys_and_an_episode_reports_its_jumps(env):
    """controller.execution and its parameters pass from configs/evaluate.yaml and configs/run.yaml through
    EvalConfig to the controller; an ensembled episode records its jump figures and, with keep_trace, the series."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from runtime.clock import SimClock
    from runtime.run import RunConfig

    conf_dir = str(Path(__file__).resolve().parents[2] / "configs")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        e = compose(config_name="evaluate", overrides=["checkpoint=x", "controller.execution=ensemble",
                                                       "controller.ensemble_decay=0.1", "latency=0.2"])
        r = compose(config_name="run", overrides=["checkpoint=x", "controller.execution=rtc"])
        defaults = [compose(config_name=n, overrides=["checkpoint=x"]) for n in ("evaluate", "run")]
    # unset, both shipped configs join chunks as the dataclass does: naive (success first; README)
    assert [d.controller.execution for d in defaults] == ["naive", "naive"]
    assert EvalConfig(checkpoint="x").controller.execution == "naive"
    cfg = from_dict(EvalConfig, OmegaConf.to_container(e, resolve=True))
    assert cfg.controller.execution == "ensemble" and cfg.controller.ensemble_decay == 0.1
    assert from_dict(RunConfig, OmegaConf.to_container(r, resolve=True)).controller.latency_quantile == 0.9
    with pytest.raises(ConfigError, match="controller.execution must be one of auto, naive, rtc, bid, ensemble"):
        from_dict(EvalConfig, {"checkpoint": "x", "controller": {"execution": "smooth"}})
    cfg.controller.keep_trace, cfg.max_steps = True, 40
    demo = rollout(env, 5, keep_obs=False)
    clock = SimClock()
    rec = run_episode(env, ReplayPolicy(demo["actions"], clock), cfg, seed=5, clock=clock)
    assert rec["error"] is None and rec["chunks"] > 2 and rec["chunk_switches"] >= 1
    assert len(rec["jumps"]["switch_jump_m"]) == rec["chunk_switches"] and rec["within_jump_m_p95"] is not None
    assert rec["limit_interventions"] == sum(rec["interventions"].get(k, 0)
                                             for k in ("speed", "accel", "rot_speed", "rot_accel"))


def test_display_saves_the_first_episodes_one_recording_each(trained, tmp_path):
    pytest.importorskip("rerun", reason='the viz extra: pip install -e ".[viz]"')
    from tests.runtime.test_viz import read_rrd

    _, ckpt = trained
    rrd = tmp_path / "eval.rrd"
    cfg = from_dict(EvalConfig, {"checkpoint": str(ckpt), "episodes": 3, "seed": 1, "workers": 1, "videos": 0,
                                 "latency": "zero", "max_steps": 8, "out": str(tmp_path / "ev"), "progress": False,
                                 "display": f"rerun+save:{rrd}", "display_episodes": 2})
    s = evaluate(cfg)
    files = sorted(p.name for p in tmp_path.glob("*.rrd"))
    assert files == ["eval_episode_000_seed_3.rrd", "eval_episode_001_seed_4.rrd"]  # the third is not shown
    rows = read_rrd(tmp_path / files[0])
    assert [t for t, _ in rows["/timing/tick_jitter_ms"]] == list(range(s["episodes"][0]["steps"]))
    assert len(rows["/cameras/scene_rgb"]) == len(rows["/cameras/wrist_rgb"]) == s["episodes"][0]["steps"]
    assert len(rows["/world/chunk"]) == s["episodes"][0]["chunks"]


def test_episode_displays_name_one_file_per_episode():
    from sim.evaluate import episode_displays

    assert episode_displays("none", 2, [5, 6, 7]) == ["none"] * 3
    assert episode_displays("rerun", 2, [5, 6, 7]) == ["rerun", "rerun", "none"]
    assert episode_displays("rerun+save:a/e.rrd", 1, [5, 6]) == ["rerun+save:a/e.rrd", "none"]
    with pytest.raises(ConfigError, match="display"):
        from_dict(EvalConfig, {"checkpoint": "x", "display": "rerun+save:"})
