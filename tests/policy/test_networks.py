"""Networks: shapes for both chunk lengths, crops, encoders, local pretrained weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from policy.config import EncoderConfig, PolicyConfig, UNetConfig
from policy.encoders import ImageEncoder, ObsEncoder, SpatialSoftmax, crop_images, gather_crops, slice_crops
from policy.unet import ConditionalUnet1D


@pytest.mark.parametrize("chunk_len", [16, 32])
@pytest.mark.parametrize("down_dims", [(64, 128), (32, 64, 128)])
def test_unet_shapes_and_conditioning(chunk_len, down_dims):
    torch.manual_seed(0)
    net = ConditionalUnet1D(10, 40, down_dims, kernel_size=5, n_groups=8, step_embed_dim=32)
    x = torch.randn(3, chunk_len, 10)
    cond = net.prepare_condition(torch.randn(3, 40))
    y = net(x, torch.tensor([0.0, 5.0, 99.0]), cond)
    assert y.shape == (3, chunk_len, 10)
    # the output depends on the observation and on the timestep (FiLM is wired in)
    y_other_obs = net(x, torch.tensor([0.0, 5.0, 99.0]), net.prepare_condition(torch.randn(3, 40)))
    y_other_t = net(x, torch.tensor([50.0, 50.0, 50.0]), cond)
    assert not torch.allclose(y, y_other_obs) and not torch.allclose(y, y_other_t)


def test_spatial_softmax_finds_a_bright_spot():
    ss = SpatialSoftmax(1, 1, 9, 9)
    with torch.no_grad():
        ss.keypoints.weight.fill_(50.0)
        ss.keypoints.bias.zero_()
    fmap = torch.zeros(1, 1, 9, 9)
    fmap[0, 0, 2, 6] = 1.0  # row 2 (y), column 6 (x)
    x, y = ss(fmap)[0].tolist()
    assert x == pytest.approx(-1 + 2 * 6 / 8, abs=1e-3) and y == pytest.approx(-1 + 2 * 2 / 8, abs=1e-3)


def test_random_crop_varies_and_centre_crop_is_fixed():
    imgs = torch.arange(4 * 10 * 10 * 3, dtype=torch.int32).reshape(4, 10, 10, 3).to(torch.uint8)
    centre = crop_images(imgs, (6, 6), random=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(centre, imgs[:, 2:8, 2:8])
    a = crop_images(imgs, (6, 6), True, torch.Generator().manual_seed(0))
    b = crop_images(imgs, (6, 6), True, torch.Generator().manual_seed(0))
    c = crop_images(imgs, (6, 6), True, torch.Generator().manual_seed(1))
    assert a.shape == (4, 6, 6, 3) and torch.equal(a, b) and not torch.equal(a, c)
    # every random crop is a contiguous window of its own image
    for i in range(4):
        found = any(torch.equal(a[i], imgs[i, r:r + 6, s:s + 6]) for r in range(5) for s in range(5))
        assert found


def test_crops_by_slices_and_by_gather_are_the_same():
    # CPU training slices, GPUs gather: the same corners must give the same crops
    imgs = torch.randint(0, 256, (5, 12, 11, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    top, left = torch.tensor([0, 4, 2, 4, 1]), torch.tensor([3, 0, 5, 1, 2])
    a, b = slice_crops(imgs, top, left, (8, 6)), gather_crops(imgs, top, left, (8, 6))
    assert a.shape == (5, 8, 6, 3) and torch.equal(a, b)
    assert torch.equal(a[2], imgs[2, 2:10, 5:11])


def test_obs_encoder_output_size_and_time_flattening():
    cfg = PolicyConfig(image_shape=(32, 32), n_obs_steps=2,
                       encoder=EncoderConfig(crop_shape=(28, 28), channels=(8, 8), stem_stride=2, feature_dim=16))
    enc = ObsEncoder(cfg)
    obs = {"scene_rgb": torch.zeros(2, 2, 32, 32, 3, dtype=torch.uint8),
           "wrist_rgb": torch.zeros(2, 2, 32, 32, 3, dtype=torch.uint8),
           "ee_pose": torch.zeros(2, 2, 9), "gripper": torch.zeros(2, 2, 1), "action_history": torch.zeros(2, 2, 10)}
    out = enc(obs)
    assert out.shape == (2, enc.out_dim) and enc.out_dim == 2 * (2 * 16 + 9 + 1 + 10)


def test_resnet18_uses_groupnorm_only():
    enc = ImageEncoder(EncoderConfig(backbone="resnet18"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in enc.modules())
    assert enc(torch.zeros(2, 3, 84, 84)).shape == (2, 64)


def test_resnet18_loads_local_imagenet_style_weights(tmp_path):
    import torchvision

    bn_net = torchvision.models.resnet18(weights=None)  # BatchNorm layout, like the ImageNet file
    state = {k: v.clone() for k, v in bn_net.state_dict().items()}
    save_file(state, str(tmp_path / "r18.safetensors"))
    torch.save(state, tmp_path / "r18.pth")
    for name in ("r18.safetensors", "r18.pth"):
        enc = ImageEncoder(EncoderConfig(backbone="resnet18", pretrained_path=str(tmp_path / name)))
        conv1 = enc.backbone[0].weight
        assert torch.equal(conv1, state["conv1.weight"])
        assert torch.equal(enc.backbone[4][0].bn1.weight, state["layer1.0.bn1.weight"])  # GN affine from BN


def test_resnet18_refuses_a_wrong_or_missing_weight_file(tmp_path):
    save_file({"conv1.weight": torch.zeros(64, 1, 7, 7)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="conv1.weight"):
        ImageEncoder(EncoderConfig(backbone="resnet18", pretrained_path=str(tmp_path / "bad.safetensors")))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ImageEncoder(EncoderConfig(backbone="resnet18", pretrained_path=str(tmp_path / "none.pth")))


def test_unet_config_rejects_groups_that_do_not_divide():
    with pytest.raises(ValueError, match="n_groups"):
        UNetConfig(down_dims=(64, 100), n_groups=8)


def test_color_jitter_scales_each_image_within_its_bounds():
    from policy.encoders import jitter_colors

    x = torch.linspace(-1, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8)
    assert jitter_colors(x, 0.0) is x  # off: untouched
    gray = torch.full((256, 3, 4, 4), 0.0)  # y = 0.5 everywhere: contrast does nothing, brightness scales
    out = jitter_colors(gray, 0.2, torch.Generator().manual_seed(0))
    y = (out[:, 0, 0, 0] + 1) / 2
    assert torch.all(y >= 0.5 * 0.8 - 1e-6) and torch.all(y <= 0.5 * 1.2 + 1e-6)
    assert y.std() > 0.03  # per-image factors, not one for the batch
    assert torch.all(out == out[:, :1, :1, :1])  # one factor per image
    a = jitter_colors(x, 0.3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, jitter_colors(x, 0.3, torch.Generator().manual_seed(1)))  # repeatable
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, x)


def test_color_jitter_acts_in_training_only():
    def encoder(jitter: float) -> ObsEncoder:
        torch.manual_seed(0)  # the same weights for both
        return ObsEncoder(PolicyConfig(image_shape=(32, 32), n_obs_steps=1, encoder=EncoderConfig(
            crop_shape=(32, 32), channels=(8, 8), stem_stride=2, feature_dim=16, color_jitter=jitter)))

    enc, plain = encoder(0.3), encoder(0.0)
    g = torch.Generator().manual_seed(0)
    obs = {"scene_rgb": torch.randint(0, 255, (2, 1, 32, 32, 3), dtype=torch.uint8, generator=g),
           "wrist_rgb": torch.randint(0, 255, (2, 1, 32, 32, 3), dtype=torch.uint8, generator=g),
           "ee_pose": torch.zeros(2, 1, 9), "gripper": torch.zeros(2, 1, 1), "action_history": torch.zeros(2, 1, 10)}
    enc.eval(), plain.eval()
    torch.testing.assert_close(enc(obs), plain(obs))  # inference: no jitter
    enc.train(), plain.train()
    assert not torch.allclose(enc(obs, torch.Generator().manual_seed(5)), plain(obs, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="color_jitter"):
        EncoderConfig(color_jitter=1.5)
