"""An exported policy on the runtime path: without torch (a subprocess where importing it fails), naive
execution chosen by ``auto``, and a clear refusal of ``rtc`` / ``bid``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e \".[deploy]\")")

from policy.data.synthetic import make_synthetic_dataset  # noqa: E402
from policy.export import ExportConfig, export_policy  # noqa: E402
from policy.loader import load_policy  # noqa: E402
from runtime.clock import SimClock  # noqa: E402
from runtime.controller import Controller, ControllerConfig  # noqa: E402
from runtime.drivers.fake import FakeCamera, FakeRobot  # noqa: E402
from runtime.inference import ProcessWorker, SimulatedLatencyWorker  # noqa: E402
from runtime.safety import SafetyConfig, SafetyLayer  # noqa: E402
from tests.policy.conftest import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# Makes torch unimportable in every process that starts with this folder on PYTHONPATH (spawned children too).
NO_TORCH = '''
import sys


class _NoTorch:
    """A meta path finder that refuses torch and torchvision before any other finder is asked."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"torch is unimportable in this test (import of {name})")
        return None


sys.meta_path.insert(0, _NoTorch())
'''

EPISODE = '''
import json, sys
try:
    import torch  # noqa: F401
    sys.exit("torch was importable: the test's import hook is not in place")
except ImportError:
    pass

from policy.loader import load_policy
from runtime.clock import SimClock
from runtime.controller import Controller, ControllerConfig
from runtime.drivers.fake import FakeCamera, FakeRobot
from runtime.inference import SimulatedLatencyWorker
from runtime.run import InferenceConfig, RunConfig, run
from runtime.safety import SafetyConfig, SafetyLayer


def main():  # a function: runtime.run's inference process is spawned and re-imports this file
    export, log_dir = sys.argv[1], sys.argv[2]
    # 1. a simulated-clock controller episode on the fake robot and cameras
    clock = SimClock()
    robot, cams = FakeRobot(clock.now), {k: FakeCamera(clock.now, (32, 32)) for k in ("scene_rgb", "wrist_rgb")}
    for d in (robot, *cams.values()):
        d.connect()
    policy = load_policy(export, num_threads=1)
    worker = SimulatedLatencyWorker(policy, clock, 0.2)
    ctrl = Controller(robot, cams, worker, SafetyLayer(SafetyConfig(), 0.1), clock,
                      ControllerConfig(keep_trace=True, execution="auto"))
    m = ctrl.run(max_ticks=30)
    sim = {"stop_reason": m.stop_reason, "chunks": m.chunks_received, "failures": m.inference_failures,
           "ticks": len(m.trace), "execution": ctrl.execution, "policy": type(policy).__name__,
           "moved": float(abs(m.trace[-1].command[:3] - m.trace[0].command[:3]).max())}
    # 2. runtime.run as on a robot: the inference process loads the exported policy (torch unimportable there too)
    cams_cfg = {k: {"type": "fake", "height": 32, "width": 32} for k in ("scene_rgb", "wrist_rgb")}
    r = run(RunConfig(checkpoint=export, cameras=cams_cfg, duration_s=1.5, log_dir=log_dir,
                      inference=InferenceConfig(worker="process")))
    wall = {"stop_reason": r.stop_reason, "chunks": r.chunks_received, "failures": r.inference_failures}
    print(json.dumps({"sim": sim, "run": wall, "torch_loaded": "torch" in sys.modules}))


if __name__ == "__main__":
    main()
'''


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    make_synthetic_dataset(root / "d.zarr", n_episodes=3, episode_len=10, image_shape=(32, 32))
    from policy.train import train

    ckpt = train(tiny_config(root / "d.zarr", root / "train", steps=2))
    return export_policy(ExportConfig(checkpoint=str(ckpt), out=str(root / "exported")))


def test_an_exported_policy_runs_an_episode_and_runtime_run_without_torch(exported, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NO_TORCH)
    script = tmp_path / "episode.py"
    script.write_text(textwrap.dedent(EPISODE))
    env = {"PYTHONPATH": f"{hook}:{ROOT}", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, str(script), str(exported), str(tmp_path / "log")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    sim, wall = out["sim"], out["run"]
    assert sim["policy"] == "OnnxPolicy" and sim["execution"] == "naive"  # auto: it cannot continue a prefix
    assert sim["stop_reason"] == "completed" and sim["ticks"] == 30 and sim["failures"] == 0
    assert sim["chunks"] >= 3 and sim["moved"] > 1e-4  # chunks arrived and the arm followed them
    assert wall["stop_reason"] == "completed" and wall["chunks"] >= 1 and wall["failures"] == 0
    assert out["torch_loaded"] is False


def _controller(policy, execution):
    clock = SimClock()
    robot, cams = FakeRobot(clock.now), {k: FakeCamera(clock.now, (32, 32)) for k in ("scene_rgb", "wrist_rgb")}
    worker = SimulatedLatencyWorker(policy, clock, 0.2)
    cfg = ControllerConfig(execution=execution)
    return Controller(robot, cams, worker, SafetyLayer(SafetyConfig(), 0.1), clock, cfg)


@pytest.mark.parametrize("execution", ["rtc", "bid"])
def test_rtc_and_bid_are_refused_for_an_exported_policy_with_the_reason(exported, execution):
    policy = load_policy(exported)
    with pytest.raises(ValueError, match=rf"controller.execution={execution} needs a policy whose predict_chunk "
                                         r"takes a prefix.*an exported \(ONNX\) policy cannot continue a prefix"):
        _controller(policy, execution)
    assert _controller(policy, "auto").execution == "naive"
    assert _controller(policy, "ensemble").execution == "ensemble"


def test_the_inference_process_reports_why_an_exported_policy_takes_no_prefix(exported):
    worker = ProcessWorker(str(exported), SimClock())
    try:
        assert worker.accepts_prefix is False
        assert "exported (ONNX) policy cannot continue a prefix" in worker.no_prefix_reason
        assert worker.spec.obs_keys == ("scene_rgb", "wrist_rgb", "ee_pose", "gripper", "action_history")
    finally:
        worker.close()


def test_without_torch_a_torch_checkpoint_and_training_name_the_extra(exported, tmp_path):
    """The torch-free install serves exported policies only; a torch checkpoint or training says what to install."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NO_TORCH)
    env = {"PYTHONPATH": f"{hook}:{ROOT}", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    ckpt = exported.parent / "train"  # the training run the export came from
    load = ("from policy.loader import load_policy\n"
            f"try:\n    load_policy({str(ckpt)!r})\nexcept ImportError as e:\n    print('ERR', e)\n")
    r = subprocess.run([sys.executable, "-c", load], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ERR" in r.stdout, r.stderr[-2000:]
    assert "needs torch" in r.stdout and 'visuomotor-dp[train]' in r.stdout and "policy.export" in r.stdout
    r = subprocess.run([sys.executable, "-m", "policy.train", "train.dataset=x.zarr"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'needs torch: pip install "visuomotor-dp[train]"' in r.stderr, r.stderr[-2000:]
