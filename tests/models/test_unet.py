"""Tests of the denoising UNet (models/diffusion/unet.py) on tiny CPU shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from models.diffusion.unet import DepthUNet, SelfAttention, UNetConfig, count_parameters, pad_to_multiple

# Smallest valid widths: levels of 8 / 16 / 32 channels, bottleneck at 1/4 size.
TINY = {"base_channels": 8, "channel_mults": (1, 2, 4), "groups": 4, "attention_heads": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes run fastest on one thread (and do not fight over a shared machine's cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(seed: int = 0, randomize_head: bool = False, **overrides) -> DepthUNet:
    """A tiny UNet; ``randomize_head`` replaces the zero-initialised last conv by a default (random) init."""
    torch.manual_seed(seed)
    model = DepthUNet(UNetConfig(**{**TINY, **overrides}))
    if randomize_head:
        model.head[-1].reset_parameters()
    return model


def inputs(b: int, h: int, w: int, cond_channels: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, h, w, generator=g)
    cond = torch.randn(b, cond_channels, h, w, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    return x, t, cond


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (17, 23), (33, 65), (16, 16)])
def test_output_has_input_size_for_any_frame_size(size):
    model = make(randomize_head=True)
    x, t, cond = inputs(3, *size)
    out = model(x, t, cond)
    assert out.shape == (3, 1, *size)
    assert torch.isfinite(out).all()


def test_multiple_is_two_to_the_number_of_downsamplings():
    assert make().multiple == 4
    assert make(channel_mults=(1,)).multiple == 1
    assert make(channel_mults=(1, 2, 2, 4)).multiple == 8


def test_single_level_and_several_blocks_per_level_work():
    for overrides in ({"channel_mults": (2,)}, {"num_res_blocks": 2, "enhance_skips": False}):
        model = make(randomize_head=True, **overrides)
        x, t, cond = inputs(2, 6, 9)
        assert model(x, t, cond).shape == (2, 1, 6, 9)


def test_more_output_and_conditioning_channels():
    model = make(randomize_head=True, in_channels=2, cond_channels=3, out_channels=4)
    g = torch.Generator().manual_seed(0)
    out = model(torch.randn(2, 2, 9, 10, generator=g), torch.tensor([1, 2]), torch.randn(2, 3, 9, 10, generator=g))
    assert out.shape == (2, 4, 9, 10)


def test_bad_input_shapes_are_rejected():
    model = make()
    x, t, cond = inputs(2, 8, 8)
    with pytest.raises(ValueError, match="cond must be"):
        model(x, t, cond[:, :4])
    with pytest.raises(ValueError, match="x must be"):
        model(torch.cat([x, x], 1), t, cond)
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:1].repeat(3), cond)


# ----------------------------------------------------------------------------------- padding / cropping


def test_pad_to_multiple_reflects_and_falls_back_to_replicate():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    p = pad_to_multiple(x, 4)
    assert p.shape == (1, 2, 4, 8)
    assert torch.equal(p[..., :3, :5], x)
    assert torch.equal(p[..., 3, :5], x[..., 1, :])  # reflect: row 3 mirrors row 1
    assert torch.equal(p[..., :3, 5:], x[..., :, [3, 2, 1]])  # reflect: columns 5..7 mirror 3..1
    assert pad_to_multiple(x, 1) is x

    one = torch.tensor([[[[2.0, 5.0]]]])  # 1 x 2: too small to reflect 3 rows / 2 columns
    q = pad_to_multiple(one, 4)
    assert q.shape == (1, 1, 4, 4)
    assert torch.equal(q, torch.tensor([2.0, 5.0, 5.0, 5.0]).expand(1, 1, 4, 4))


def test_crop_back_is_exactly_the_top_left_of_the_padded_frame():
    """An odd-sized frame gives the same output as the manually padded frame cropped back to H x W; a
    different padding (or cropping the wrong corner) would not."""
    model = make(randomize_head=True).eval()
    x, t, cond = inputs(2, 13, 18)
    with torch.no_grad():
        out = model(x, t, cond)
        full = model(pad_to_multiple(x, 4), t, pad_to_multiple(cond, 4))
        other = model(F.pad(x, (0, 2, 0, 3)), t, F.pad(cond, (0, 2, 0, 3)))  # zero padding instead
    assert full.shape == (2, 1, 16, 20)
    torch.testing.assert_close(out, full[..., :13, :18], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, other[..., :13, :18], atol=1e-4)
    assert not torch.allclose(out, full[..., 3:, 2:], atol=1e-4)


# ------------------------------------------------------------------------------------------ conditioning


def test_untrained_output_is_exactly_zero_and_one_step_makes_it_nonzero():
    model = make()
    x, t, cond = inputs(2, 9, 11)
    assert torch.equal(model(x, t, cond), torch.zeros(2, 1, 9, 11))

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = torch.randn(2, 1, 9, 11, generator=torch.Generator().manual_seed(3))
    F.mse_loss(model(x, t, cond), target).backward()
    opt.step()
    with torch.no_grad():
        assert model(x, t, cond).abs().mean() > 1e-5


def test_timestep_and_conditioning_change_the_output():
    model = make(randomize_head=True).eval()
    x, _, cond = inputs(2, 12, 12)
    with torch.no_grad():
        early, late = model(x, torch.tensor([10, 10]), cond), model(x, torch.tensor([900, 900]), cond)
        other_cond = model(x, torch.tensor([10, 10]), cond.flip(-1))
        other_x = model(-x, torch.tensor([10, 10]), cond)
    assert (early - late).abs().mean() > 1e-3
    assert (early - other_cond).abs().mean() > 1e-3
    assert (early - other_x).abs().mean() > 1e-3


def test_scalar_int_and_float_timesteps_are_equivalent():
    model = make(randomize_head=True).eval()
    x, _, cond = inputs(2, 8, 8)
    with torch.no_grad():
        ref = model(x, torch.tensor([250, 250]), cond)
        torch.testing.assert_close(model(x, 250, cond), ref)
        torch.testing.assert_close(model(x, torch.tensor(250.0), cond), ref)
        torch.testing.assert_close(model(x, torch.tensor([250.0, 250.0]), cond), ref)
        assert not torch.allclose(model(x, torch.tensor([250, 251]), cond), ref)


# --------------------------------------------------------------------------------------------- gradients


def test_gradients_reach_every_parameter():
    model = make(randomize_head=True)
    x, t, cond = inputs(2, 10, 13)
    target = torch.randn(2, 1, 10, 13, generator=torch.Generator().manual_seed(4))
    F.mse_loss(model(x, t, cond), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _grads(model: DepthUNet) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_matches_plain_backprop():
    plain = make(randomize_head=True, dropout=0.2).train()
    ckpt = make(randomize_head=True, dropout=0.2, gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = {"plain": 0, "ckpt": 0}
    plain.encoder[0].blocks[0].conv1.register_forward_hook(lambda *_: calls.__setitem__("plain", calls["plain"] + 1))
    ckpt.encoder[0].blocks[0].conv1.register_forward_hook(lambda *_: calls.__setitem__("ckpt", calls["ckpt"] + 1))

    x, t, cond = inputs(2, 11, 14)
    outs = {}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        torch.manual_seed(7)  # same dropout masks
        outs[name] = model(x, t, cond)
        outs[name].square().mean().backward()

    assert calls == {"plain": 1, "ckpt": 2}  # the checkpointed block was recomputed in backward
    torch.testing.assert_close(outs["ckpt"], outs["plain"])
    g_plain, g_ckpt = _grads(plain), _grads(ckpt)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)

    with torch.no_grad():  # no checkpointing (and no recomputation) outside training with gradients
        ckpt(x, t, cond)
    assert calls["ckpt"] == 3


def test_tiny_model_overfits_a_fixed_batch():
    model = make(channel_mults=(1, 2))
    x, t, cond = inputs(2, 16, 16)
    target = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(model(x, t, cond), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, losses[:: 10]


# ------------------------------------------------------------------------------------------- attention


def _reference_attention(attn: SelfAttention, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Explicit per-head softmax(q k^T / sqrt(d)) v with keys/values from the pooled normalised input."""
    b, c, h, w = x.shape
    n = attn.norm(x)
    q = attn.to_q(n).flatten(2)  # [B, C, N]
    k, v = attn.to_kv(F.adaptive_avg_pool2d(n, grid)).flatten(2).chunk(2, dim=1)
    d = c // attn.heads
    heads = []
    for i in range(attn.heads):
        s = slice(i * d, (i + 1) * d)
        weights = torch.softmax(q[:, s].transpose(1, 2) @ k[:, s] / math.sqrt(d), dim=-1)  # [B, N, M]
        heads.append((weights @ v[:, s].transpose(1, 2)).transpose(1, 2))  # [B, d, N]
    return x + attn.proj(torch.cat(heads, dim=1).reshape(b, c, h, w))


def test_attention_is_exact_when_small_and_pools_keys_values_when_large():
    torch.manual_seed(0)
    exact = SelfAttention(channels=8, heads=2, groups=4, max_tokens=64)
    x = torch.randn(2, 8, 6, 7)
    assert exact.kv_grid(6, 7) == (6, 7)
    with torch.no_grad():
        torch.testing.assert_close(exact(x), _reference_attention(exact, x, (6, 7)), rtol=1e-4, atol=1e-5)

    pooled = SelfAttention(channels=8, heads=2, groups=4, max_tokens=12)
    pooled.load_state_dict(exact.state_dict())
    grid = pooled.kv_grid(6, 7)
    assert grid == (3, 4)  # factor 2, the smallest one giving <= 12 positions
    with torch.no_grad():
        torch.testing.assert_close(pooled(x), _reference_attention(pooled, x, grid), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(pooled(x), exact(x), atol=1e-4)

    for h, w, m in [(120, 160, 1024), (60, 80, 1024), (7, 5, 1), (33, 17, 10)]:
        gh, gw = SelfAttention(8, 2, 4, m).kv_grid(h, w)
        assert 1 <= gh * gw <= m


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"base_channels": 12, "groups": 8}, "base_channels"),
        ({"base_channels": 8, "channel_mults": (1, 3), "attention_heads": 5, "groups": 4}, "attention_heads"),
        ({"base_channels": 4, "groups": 4}, "base_channels"),
        ({"channel_mults": ()}, "channel_mults"),
        ({"channel_mults": (1, 0)}, "channel_mults"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"chanel_mults": (1, 2)}, "chanel_mults"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValidationError, match=field):
        UNetConfig(**overrides)


def test_config_is_frozen_and_default_is_valid():
    cfg = UNetConfig()
    with pytest.raises(ValidationError):
        cfg.base_channels = 64
    assert cfg.channels(len(cfg.channel_mults) - 1) % cfg.attention_heads == 0


def test_count_parameters():
    assert count_parameters(torch.nn.Linear(3, 2)) == 8
    model = make()
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 10_000
