"""Diffusion parametrisation and sampling against exact references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.diffusion.pipeline import (
    COND_CHANNELS,
    DiffusionConfig,
    add_noise,
    decode_x0,
    depth_scale,
    encode_x0,
    from_log,
    make_scheduler,
    normalise,
    observe,
    predict_x0,
    sample,
    to_log,
    training_target,
)
from models.noise import SensorPrior, expected_sigma


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_true_noise_recovers_x0_exactly(prediction_type):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 1, 5, 7, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sched = make_scheduler(DiffusionConfig(prediction_type=prediction_type))
    t = torch.tensor([0, 10, 250, 500, 900, 998])
    ab = sched.alphas_cumprod[t].double()
    x_t = add_noise(x0, noise, ab)
    # our forward process is the scheduler's
    torch.testing.assert_close(x_t.float(), sched.add_noise(x0.float(), noise.float(), t), rtol=1e-5, atol=1e-5)
    target = training_target(x0, noise, ab, prediction_type)
    torch.testing.assert_close(predict_x0(x_t, target, ab, prediction_type), x0, rtol=1e-9, atol=1e-9)
    if prediction_type == "v_prediction":
        torch.testing.assert_close(target.float(), sched.get_velocity(x0.float(), noise.float(), t),
                                   rtol=1e-5, atol=1e-5)


def test_naive_x0_estimate_is_wrong():
    """The prototype's x0 = x_t - eps is not the posterior mean's inverse (DESIGN.md pitfall)."""
    x0 = torch.ones(1, 1, 2, 2)
    noise = torch.full_like(x0, 0.5)
    ab = torch.tensor([0.3])
    x_t = add_noise(x0, noise, ab)
    assert not torch.allclose(x_t - noise, x0, atol=1e-2)
    torch.testing.assert_close(predict_x0(x_t, noise, ab, "epsilon"), x0)


@pytest.mark.parametrize("steps", [1, 2, 4, 10])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_few_step_ddim_with_oracle_returns_x0(steps, prediction_type):
    cfg = DiffusionConfig(prediction_type=prediction_type)
    sched = make_scheduler(cfg)
    x0 = torch.randn(2, 1, 8, 9, generator=torch.Generator().manual_seed(1))

    def oracle(x_t, t, cond):
        ab = sched.alphas_cumprod[t].to(x_t)
        a = ab.reshape(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return training_target(x0, eps, ab, prediction_type)

    out = sample(oracle, torch.zeros(2, 3, 8, 9), sched, steps, generator=torch.Generator().manual_seed(2))
    assert sched.timesteps[0] == cfg.num_train_timesteps - 1, "trailing spacing starts from pure noise"
    # eps-prediction divides by sqrt(alpha_bar) ~ 5e-5 at the first trailing step, amplifying float32 rounding
    # (the reason the refiner predicts v); v-prediction stays exact to rounding.
    tol = 1e-4 if prediction_type == "v_prediction" else 1e-2
    torch.testing.assert_close(out, x0, rtol=tol, atol=tol)


def test_depth_parametrisation_round_trips():
    cfg = DiffusionConfig()
    g = torch.Generator().manual_seed(3)
    clean = torch.rand(2, 1, 6, 6, generator=g) * 4 + 0.5
    noisy = clean * (1 + 0.01 * torch.randn(clean.shape, generator=g))
    noisy[0, 0, :2] = 0  # holes
    s = depth_scale(noisy)
    torch.testing.assert_close(s[1], noisy[1][noisy[1] > 0].median())
    assert depth_scale(torch.zeros(1, 1, 3, 3)).item() == 1.0
    y_clean, y_base = to_log(clean, s, cfg), to_log(noisy.clamp_min(0.1), s, cfg)
    assert torch.all(to_log(noisy, s, cfg)[0, 0, :2] == 0), "holes encode as 0"
    unit = torch.full_like(clean, cfg.residual_scale)
    unit[1] = 0.003  # a sensor-sigma unit on the second frame's pixels, all trusted
    trusted = torch.zeros_like(clean)
    trusted[1] = 1
    for target in ("residual", "depth"):
        c = cfg.model_copy(update={"target": target, "measured_bound": 0.0})
        x0 = encode_x0(y_clean, y_base, unit, c)
        y = decode_x0(x0, y_base, y_base, unit, trusted, c)
        torch.testing.assert_close(from_log(y, s, c), clean, rtol=1e-5, atol=1e-5)
    # scale invariance: the same scene twice as far away has the same normalised depth
    torch.testing.assert_close(to_log(2 * clean, 2 * s, cfg), y_clean)


def test_bound_keeps_trusted_measurements_near_the_observation_only():
    cfg = DiffusionConfig(measured_bound=2.5)
    y_base = torch.full((1, 1, 2, 3), 0.001)  # the (median) base differs a little from the observation
    y_obs = torch.zeros(1, 1, 2, 3)
    unit = torch.tensor([0.004, 0.004, 0.1]).expand(1, 1, 2, 3).contiguous()
    trusted = torch.tensor([1.0, 1.0, 0.0]).expand(1, 1, 2, 3).contiguous()
    x0 = torch.tensor([[0.25, 40.0, 40.0], [-0.5, -1e4, -3.0]])[None, None]
    y = decode_x0(x0, y_base, y_obs, unit, trusted, cfg)
    # trusted: within 2.5 units of the observation whatever x0 is; small moves nearly unchanged
    assert torch.all(y[..., :2].abs() <= 2.5 * 0.004 * (1 + 1e-6))
    free = 0.001 + 0.25 * 0.004
    torch.testing.assert_close(y[0, 0, 0, 0], torch.tensor(2.5 * 0.004 * np.tanh(free / 0.01), dtype=torch.float32))
    torch.testing.assert_close(y[0, 0, 1, 1], torch.tensor(-2.5 * 0.004))
    # untrusted pixels (holes, edges) are free: base + unit * x0
    torch.testing.assert_close(y[0, 0, :, 2], torch.tensor([4.001, -0.299]))


def test_normalise_units_and_conditioning():
    """Trusted pixels are in units of the sensor sigma in log-depth; the rest in residual_scale."""
    cfg = DiffusionConfig()
    sensor = SensorPrior()
    rng = np.random.default_rng(0)
    depth = np.full((24, 32), 2.0, np.float32)
    depth[:, 16:] = 3.0
    noisy = depth + expected_sigma(depth, sensor) * rng.standard_normal(depth.shape).astype(np.float32)
    noisy[5:8, 5:8] = 0
    obs = observe(noisy, 150.0, sensor, cfg.model_copy(update={"base_median": 1}))
    assert np.array_equal(obs.base[noisy > 0], noisy[noisy > 0]), "without a median the base is the observation"
    smooth = observe(noisy, 150.0, sensor, cfg).base
    assert np.std(smooth[15:, :12] - 2.0) < 0.6 * np.std(noisy[15:, :12] - 2.0), "the median base is smoother"
    assert not obs.trusted[5:8, 5:8].any() and not obs.trusted[:, 15:17].any(), "holes and edges are not trusted"
    assert obs.trusted[15:, :12].all() and obs.trusted[15:, 20:].all()

    def t(a):
        return torch.from_numpy(np.asarray(a, np.float32))[None, None]

    norm = normalise(torch.rand(1, 3, 24, 32), t(noisy), t(obs.base), t(obs.sigma), t(obs.trusted), cfg)
    assert norm.cond.shape == (1, COND_CHANNELS, 24, 32)
    z = noisy[20, 4]
    # at a trusted pixel of the 2 m plane: unit = sigma(z) / z / log_scale at the base depth (= observed here)
    expected_unit = float(expected_sigma(z, sensor)) / z / cfg.log_scale
    assert norm.unit[0, 0, 20, 4].item() == pytest.approx(expected_unit, rel=1e-4)
    deviation = norm.cond[:, 8:9]
    torch.testing.assert_close(deviation, torch.zeros_like(deviation))  # observation = base without a median
    assert norm.unit[0, 0, 6, 6].item() == pytest.approx(cfg.residual_scale)
    torch.testing.assert_close(norm.cond[:, 6:7], torch.log(norm.unit / cfg.residual_scale))
    torch.testing.assert_close(norm.cond[:, 7:8], t(obs.trusted))
    # the clean depth's x0 on the trusted 2 m plane is the sensor error in sigmas: about N(0, 1)
    y_clean = to_log(t(depth), norm.scale, cfg)
    x0 = encode_x0(y_clean, norm.y_base, norm.unit, cfg)[0, 0][torch.from_numpy(obs.trusted)]
    assert 0.8 < x0.std().item() < 1.2 and abs(x0.mean().item()) < 0.15
