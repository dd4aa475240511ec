"""Sampler math: with an oracle network every sampler must land on the data it is asked for."""

from __future__ import annotations

import math

import pytest
import torch

from policy.config import ObjectiveConfig
from policy.objectives import DDPMObjective, FlowObjective, masked_l1, masked_mse, squared_cosine_betas

TARGET = torch.tensor([[0.3, -0.7], [0.9, 0.1], [-0.5, 0.5], [0.0, -1.0]])  # (T, A) = (4, 2)


def test_squared_cosine_schedule_runs_from_clean_to_noise():
    betas = squared_cosine_betas(100)
    ab = torch.cumprod(1 - betas, 0)
    assert betas.shape == (100,) and torch.all(betas > 0) and torch.all(betas <= 0.999)
    assert torch.all(ab[1:] < ab[:-1])  # monotone
    assert ab[0] > 0.999 and ab[-1] < 1e-3


class EpsOracle(torch.nn.Module):
    """Predicts the exact noise for data that is always TARGET."""

    def __init__(self, obj: DDPMObjective):
        super().__init__()
        self.ab = obj.alphas_cumprod

    def forward(self, x, t, cond):
        ab = self.ab[t.long()].float()[:, None, None]
        return (x - ab.sqrt() * TARGET) / (1 - ab).sqrt()


class VelocityOracle(torch.nn.Module):
    """Predicts the exact velocity towards TARGET on the linear path (time on the [0, 100) scale)."""

    def forward(self, x, t, cond):
        tt = (t / 100.0)[:, None, None]
        return (TARGET - x) / (1 - tt)


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddim", 4), ("ddpm", 100), ("ddpm", 10)])
def test_ddpm_samplers_recover_the_data_with_an_oracle(sampler, steps):
    obj = DDPMObjective(ObjectiveConfig(name="ddpm", sampler=sampler, num_inference_steps=steps))
    out = obj.sample(EpsOracle(obj), torch.zeros(8, 1), (4, 2), steps, sampler, torch.Generator().manual_seed(0))
    assert out.shape == (8, 4, 2)
    torch.testing.assert_close(out, TARGET.expand(8, -1, -1), atol=1e-3, rtol=0)


@pytest.mark.parametrize("steps", [1, 4, 10])
def test_euler_flow_sampler_recovers_the_data_with_an_oracle(steps):
    obj = FlowObjective(ObjectiveConfig(name="flow", sampler="euler", num_inference_steps=steps))
    out = obj.sample(VelocityOracle(), torch.zeros(8, 1), (4, 2), steps, "euler", torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, TARGET.expand(8, -1, -1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_oracle_has_zero_loss_and_a_wrong_net_does_not(name):
    cfg = ObjectiveConfig(name=name, sampler="ddim" if name == "ddpm" else "euler", num_inference_steps=4)
    obj = DDPMObjective(cfg) if name == "ddpm" else FlowObjective(cfg)
    oracle = EpsOracle(obj) if name == "ddpm" else VelocityOracle()
    data = TARGET.expand(16, -1, -1)
    gen = torch.Generator().manual_seed(1)
    if name == "flow":  # the velocity oracle divides by 1 - t; keep away from t = 1
        obj._sample_t = lambda b, g, d: torch.rand(b, generator=g) * 0.9
    assert obj.loss(oracle, data, torch.zeros(16, 1), gen).item() < 1e-8
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    assert obj.loss(zero, data, torch.zeros(16, 1), gen).item() > 0.1


def test_masked_mse_ignores_masked_dimensions():
    pred, target = torch.zeros(2, 3, 2), torch.zeros(2, 3, 2)
    pred[..., 1] = 5.0  # error only in a masked dimension
    assert masked_mse(pred, target, torch.tensor([1.0, 0.0])).item() == 0.0
    assert math.isclose(masked_mse(pred, target, None).item(), 12.5)


def test_ddpm_timesteps_start_at_the_noisiest_step_and_refuse_too_many():
    obj = DDPMObjective(ObjectiveConfig(name="ddpm", sampler="ddim", num_inference_steps=4))
    assert obj.timesteps(4) == [99, 74, 49, 24]
    assert obj.timesteps(100) == list(range(99, -1, -1))
    with pytest.raises(ValueError, match=r"\[1, 100\]"):
        obj.timesteps(150)


class SampleOracle(torch.nn.Module):
    """Predicts the clean chunk TARGET whatever the input (a clean-sample prediction net)."""

    def forward(self, x, t, cond):
        return TARGET.expand(x.shape[0], -1, -1)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sample_prediction_lands_on_the_predicted_chunk(steps):
    obj = FlowObjective(ObjectiveConfig(name="flow", num_inference_steps=steps, flow_prediction="sample"))
    out = obj.sample(SampleOracle(), torch.zeros(8, 1), (4, 2), steps, "euler", torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, TARGET.expand(8, -1, -1), atol=1e-5, rtol=0)
    # the same net read as a velocity net does not land there: the conversion is what makes it right
    vel = FlowObjective(ObjectiveConfig(name="flow", num_inference_steps=steps))
    other = vel.sample(SampleOracle(), torch.zeros(8, 1), (4, 2), steps, "euler", torch.Generator().manual_seed(0))
    assert (other - TARGET).abs().max() > 0.1


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_sample_prediction_loss_is_zero_for_the_oracle_only(loss):
    obj = FlowObjective(ObjectiveConfig(name="flow", flow_prediction="sample", loss=loss))
    data, gen = TARGET.expand(16, -1, -1), torch.Generator().manual_seed(1)
    assert obj.loss(SampleOracle(), data, torch.zeros(16, 1), gen).item() < 1e-10
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    expected = TARGET.abs().mean() if loss == "l1" else (TARGET ** 2).mean()
    assert math.isclose(obj.loss(zero, data, torch.zeros(16, 1), gen).item(), expected.item(), rel_tol=1e-5)


def test_masked_l1_ignores_masked_dimensions():
    pred, target = torch.zeros(2, 3, 2), torch.zeros(2, 3, 2)
    pred[..., 0], pred[..., 1] = -2.0, 5.0
    assert math.isclose(masked_l1(pred, target, torch.tensor([1.0, 0.0])).item(), 2.0)
    assert math.isclose(masked_l1(pred, target, None).item(), 3.5)


@pytest.mark.parametrize("how", ["uniform", "beta", "logit_normal", "u_shaped"])
def test_flow_time_sampling_has_its_shape(how):
    obj = FlowObjective(ObjectiveConfig(name="flow", flow_time_sampling=how))
    t = obj._sample_t(200_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert t.shape == (200_000,) and t.min() >= 0 and t.max() < 1
    ends = ((t < 0.1) | (t > 0.9)).float().mean().item()  # uniform: 0.2
    middle = ((t > 0.4) & (t < 0.6)).float().mean().item()  # uniform: 0.2
    low = (t < 0.5).float().mean().item()
    if how == "uniform":
        assert abs(ends - 0.2) < 0.01 and abs(middle - 0.2) < 0.01
    elif how == "u_shaped":  # arcsine: P(t < 0.1) = 2/pi asin(sqrt(0.1)) = 0.205 per end
        assert abs(ends - 0.41) < 0.01 and middle < 0.14 and abs(low - 0.5) < 0.01
    elif how == "logit_normal":  # sigmoid(N(0, 1)): P(|z| < logit(0.6)) = 0.318, P(|z| > logit(0.9)) = 0.028
        assert abs(middle - 0.318) < 0.01 and abs(ends - 0.028) < 0.005
    else:  # beta: more weight near the noise end
        assert low > 0.6


def test_objective_options_are_checked():
    for bad in ({"flow_prediction": "epsilon"}, {"flow_time_sampling": "cosine"}, {"loss": "huber"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ObjectiveConfig(name="flow", **bad)
