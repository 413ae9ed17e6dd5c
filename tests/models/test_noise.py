"""Tests of the structured-light depth-sensor noise model (models/noise.py) on synthetic scenes."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from models.camera import intrinsics_from_fov
from models.noise import (
    NoiseModelConfig,
    axial_sigma,
    depth_edges,
    disparity_step_depth,
    frame_rng,
    lateral_sigma_px,
    projector_shadow_mask,
    quantize_depth,
    simulate_sensor_noise,
)

H, W = 240, 320
K = intrinsics_from_fov(W, H, 60.0)
F = K[0, 0]
B = 0.075
EFFECTS = ("axial", "quantization", "lateral", "flying_pixels", "shadow", "grazing", "dark", "dropout", "range")

# Box-on-wall scene: a fronto-parallel box face at 1 m in front of a wall at 3 m.
Z_NEAR, Z_FAR = 1.0, 3.0
BOX_ROWS, BOX_COLS = slice(80, 160), slice(120, 200)


def only(*names: str, **overrides: dict) -> NoiseModelConfig:
    """Config with only the named effects enabled; ``overrides`` add settings to a sub-config.

    The sensor's focal length is the image's (``sensor_focal_px=None``), so per-pixel laws apply directly.
    """
    cfg = {name: {"enabled": name in names} for name in EFFECTS}
    for name, extra in overrides.items():
        cfg[name].update(extra)
    return NoiseModelConfig(sensor_focal_px=None, **cfg)


def wall(z: float, h: int = H, w: int = W) -> np.ndarray:
    return np.full((h, w), z, dtype=np.float32)


def box_on_wall() -> np.ndarray:
    d = wall(Z_FAR)
    d[BOX_ROWS, BOX_COLS] = Z_NEAR
    return d


# ------------------------------------------------------------------------------------------ noise laws


def test_axial_sigma_hand_values():
    assert axial_sigma(0.4) == pytest.approx(0.0012)
    assert axial_sigma(1.0) == pytest.approx(0.0012 + 0.0019 * 0.36)
    assert axial_sigma(3.0) == pytest.approx(0.0012 + 0.0019 * 2.6**2)
    # Angle term at 60 deg, z = 4: 0.0001 / 2 * (pi/3)^2 / (pi/6)^2 = 0.00005 * 4.
    assert axial_sigma(4.0, np.pi / 3) == pytest.approx(0.0012 + 0.0019 * 3.6**2 + 0.0002)
    z = np.array([1.0, 2.0])
    assert axial_sigma(z, 0.0).shape == (2,)


def test_axial_sigma_grows_at_grazing_angles():
    thetas = np.deg2rad([0.0, 30.0, 60.0, 75.0, 85.0])
    s = axial_sigma(2.0, thetas)
    assert np.all(np.diff(s) > 0)
    assert s[-1] > 4 * s[0]


def test_lateral_sigma():
    assert lateral_sigma_px(0.0) == pytest.approx(0.8)
    assert lateral_sigma_px(0.0, base_px=1.6) == pytest.approx(1.6)
    assert lateral_sigma_px(np.pi / 4) == pytest.approx(0.8 + 0.035)
    assert lateral_sigma_px(np.deg2rad(80)) > lateral_sigma_px(np.deg2rad(40))


def test_disparity_step_depth_hand_value():
    assert disparity_step_depth(2.0, 500.0, 0.075, 0.125) == pytest.approx(4.0 * 0.125 / 37.5)


# ------------------------------------------------------------------------------------------ axial noise


@pytest.mark.parametrize("z", [0.8, 1.5, 2.5, 3.5])
def test_axial_noise_on_flat_wall_matches_model(z):
    clean = wall(z)
    noisy = simulate_sensor_noise(clean, K, only("axial"), np.random.default_rng(0))
    err = noisy.astype(np.float64) - clean
    assert np.all(noisy > 0)
    assert abs(err.mean()) < 0.1 * axial_sigma(z)
    assert err.std() == pytest.approx(float(axial_sigma(z)), rel=0.10)


def test_axial_scale_multiplies_sigma():
    clean = wall(2.0)
    noisy = simulate_sensor_noise(clean, K, only("axial", axial={"scale": 3.0}), np.random.default_rng(1))
    assert (noisy - clean).std() == pytest.approx(3.0 * float(axial_sigma(2.0)), rel=0.10)


# ------------------------------------------------------------------------------------------ quantisation


def ramp(z: float, half_width: float, n: int = 4000) -> np.ndarray:
    return np.tile(np.linspace(z - half_width, z + half_width, n, dtype=np.float32), (4, 1))


def quantized_levels(z: float) -> tuple[np.ndarray, np.ndarray]:
    step = float(disparity_step_depth(z, F, B, 0.125))
    clean = ramp(z, 8 * step)
    out = simulate_sensor_noise(clean, K, only("quantization"), np.random.default_rng(0))
    return clean, out


@pytest.mark.parametrize("z", [1.0, 3.0])
def test_quantization_level_spacing(z):
    _, out = quantized_levels(z)
    levels = np.unique(out.astype(np.float64))
    assert len(levels) >= 10
    spacing = np.diff(levels)
    expected = disparity_step_depth(0.5 * (levels[1:] + levels[:-1]), F, B, 0.125)
    np.testing.assert_allclose(spacing, expected, rtol=0.05)


def test_quantization_step_grows_with_z_squared():
    step1 = np.median(np.diff(np.unique(quantized_levels(1.0)[1])))
    step3 = np.median(np.diff(np.unique(quantized_levels(3.0)[1])))
    assert step3 / step1 == pytest.approx(9.0, rel=0.05)


def test_quantization_uses_the_sensor_focal_length_not_the_image_resolution():
    """A frame stored at a quarter of the sensor's resolution gets the sensor's depth steps, not 4x coarser."""
    clean = ramp(2.0, 0.2)
    cfg = only("quantization").model_copy(update={"sensor_focal_px": F})
    full = simulate_sensor_noise(clean, K, cfg, np.random.default_rng(0))
    K_small = K.copy()
    K_small[:2] /= 4
    small = simulate_sensor_noise(clean, K_small, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(small, full)
    coarse = simulate_sensor_noise(clean, K_small, only("quantization"), np.random.default_rng(0))
    assert len(np.unique(coarse)) < len(np.unique(full)) / 3


@pytest.mark.parametrize("z", [0.7, 1.0, 2.0, 4.0])
def test_quantization_error_bounded_by_half_step(z):
    clean, out = quantized_levels(z)
    err = np.abs(out.astype(np.float64) - clean)
    half = 0.5 * disparity_step_depth(clean, F, B, 0.125)
    assert np.all(err <= half * 1.05 + 1e-6)
    assert err.max() > 0.3 * half.max()  # it really quantises


def test_quantize_depth_keeps_holes():
    z = np.array([0.0, 1.0, 0.0, 2.0])
    q = quantize_depth(z, F, B, 0.125)
    assert q[0] == 0 and q[2] == 0
    assert q[1] > 0 and q[3] > 0


# ---------------------------------------------------------------------------------------- projector shadow


def test_flat_wall_has_no_shadow():
    for side in ("left", "right"):
        assert not projector_shadow_mask(wall(2.0), K, B, side).any()


@pytest.mark.parametrize("side", ["right", "left"])
def test_shadow_band_beside_box(side):
    # Projector at x = +b (right): a point maps to projector column u - f b / z. Near points shift further
    # left, so the box hides the wall just LEFT of its left edge from the projector. Mirrored for the left.
    depth = box_on_wall()
    mask = projector_shadow_mask(depth, K, B, side)
    rows, cols = np.nonzero(mask)
    assert np.array_equal(np.unique(rows), np.arange(BOX_ROWS.start, BOX_ROWS.stop))
    assert np.all(depth[mask] == Z_FAR)  # the wall is shadowed, not the box
    if side == "right":
        assert cols.max() == BOX_COLS.start - 1
    else:
        assert cols.min() == BOX_COLS.stop
    width = F * B * (1 / Z_NEAR - 1 / Z_FAR)
    per_row = mask[BOX_ROWS].sum(axis=1)
    assert np.all(np.abs(per_row - width) <= 2)
    # Each row's shadow is one contiguous band.
    for r in range(BOX_ROWS.start, BOX_ROWS.stop):
        c = np.nonzero(mask[r])[0]
        assert c.max() - c.min() + 1 == len(c)


def test_flipping_side_mirrors_shadow():
    depth = box_on_wall()
    depth[:, :40] = 2.0  # make the scene asymmetric
    right = projector_shadow_mask(depth, K, B, "right")
    left_of_mirror = projector_shadow_mask(depth[:, ::-1], K, B, "left")[:, ::-1]
    assert right.any()
    assert np.array_equal(right, left_of_mirror)


def test_holes_cast_no_shadow():
    depth = wall(3.0)
    depth[BOX_ROWS, BOX_COLS] = 0.0
    assert not projector_shadow_mask(depth, K, B, "right").any()


# ----------------------------------------------------------------------------------------- edges, flying


def test_depth_edges():
    depth = box_on_wall()
    edges = depth_edges(depth, 0.1)
    assert edges[100, 119] and edges[100, 120] and edges[100, 199] and edges[100, 200]
    assert edges[79, 150] and edges[80, 150]
    assert not edges[100, 118] and not edges[100, 121] and not edges[10, 10]
    depth[0:10, 0:10] = 0.0
    edges = depth_edges(depth, 0.1)
    assert not edges[0:11, 0:11].any()  # a jump to a hole is not an edge
    assert not depth_edges(depth, 5.0).any()


def test_flying_pixels_only_between_near_and_far_at_edges():
    depth = box_on_wall()
    out = simulate_sensor_noise(depth, K, only("flying_pixels", flying_pixels={"prob": 1.0}),
                                np.random.default_rng(3))
    changed = out != depth
    edges = depth_edges(depth, 0.1)
    assert changed.sum() > 0.95 * edges.sum()
    assert not (changed & ~edges).any()
    assert np.all((out[changed] > Z_NEAR) & (out[changed] < Z_FAR))


def test_flying_pixel_probability():
    depth = box_on_wall()
    out = simulate_sensor_noise(depth, K, only("flying_pixels"), np.random.default_rng(4))
    frac = (out != depth)[depth_edges(depth, 0.1)].mean()
    assert frac == pytest.approx(0.5, abs=0.08)


# -------------------------------------------------------------------------------------------- lateral


def test_lateral_jitter_makes_edges_jagged_without_new_values():
    depth = box_on_wall()
    out = simulate_sensor_noise(depth, K, only("lateral"), np.random.default_rng(5))
    assert set(np.unique(out)) <= {np.float32(Z_NEAR), np.float32(Z_FAR)}  # nearest neighbour, no averaging
    assert (out != depth).sum() > 100
    assert np.array_equal(out[:40], depth[:40])  # far from edges nothing changes


# -------------------------------------------------------------------------------------------- holes


def test_default_holes_concentrate_at_discontinuities():
    depth = box_on_wall()
    out = simulate_sensor_noise(depth, K, NoiseModelConfig(), np.random.default_rng(6))
    edges = depth_edges(depth, 0.1)
    band = np.zeros_like(edges)
    for r, c in zip(*np.nonzero(edges), strict=True):
        band[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4] = True
    holes = out == 0
    frac_band, frac_else = holes[band].mean(), holes[~band].mean()
    assert frac_else > 0  # i.i.d. dropout exists everywhere
    assert frac_band >= 5 * frac_else


def tilted_plane(tilt_deg: float, h: int = 60, w: int = 80, fov: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Plane through (0, 0, 2) whose normal is tilted ``tilt_deg`` about the camera y axis."""
    k = intrinsics_from_fov(w, h, fov)
    a = np.deg2rad(tilt_deg)
    n = np.array([-np.sin(a), 0.0, -np.cos(a)])
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1)
    depth = (n @ np.array([0.0, 0.0, 2.0])) / (rays @ n)
    assert np.all(depth > 0)
    return depth.astype(np.float32), k


def test_grazing_dropout():
    cfg = only("grazing")
    flat, k = tilted_plane(0.0)
    tilted, _ = tilted_plane(80.0)
    holes_flat = (simulate_sensor_noise(flat, k, cfg, np.random.default_rng(7)) == 0).mean()
    holes_tilted = (simulate_sensor_noise(tilted, k, cfg, np.random.default_rng(7)) == 0).mean()
    assert holes_flat == 0  # incidence <= ~12 deg everywhere, far below start_deg
    assert holes_tilted > 0.4


def test_range_limit():
    depth = np.tile(np.linspace(0.2, 6.0, 500, dtype=np.float32), (3, 1))
    out = simulate_sensor_noise(depth, K, only("range", range={"min_m": 0.6, "max_m": 4.0}),
                                np.random.default_rng(0))
    inside = (depth >= 0.6) & (depth <= 4.0)
    assert np.array_equal(out[inside], depth[inside])
    assert np.all(out[~inside] == 0)


def test_dark_surface_dropout():
    depth = wall(2.0, 100, 100)
    rgb = np.full((100, 100, 3), 200, dtype=np.uint8)
    rgb[:, :50] = 5  # luma 0.02 < 0.06
    rgb[:, 50:60] = (40, 0, 0)  # luma 0.047: dark although red is not tiny
    out = simulate_sensor_noise(depth, K, only("dark"), np.random.default_rng(8), rgb=rgb)
    assert (out[:, :60] == 0).mean() == pytest.approx(0.5, abs=0.05)
    assert not (out[:, 60:] == 0).any()
    out = simulate_sensor_noise(depth, K, only("dark", dark={"prob": 1.0}), np.random.default_rng(8), rgb=rgb)
    assert np.all(out[:, :60] == 0)
    # Without an image the effect has nothing to go on.
    out = simulate_sensor_noise(depth, K, only("dark", dark={"prob": 1.0}), np.random.default_rng(8))
    assert np.array_equal(out, depth)


def test_iid_dropout_rate():
    depth = wall(2.0)
    out = simulate_sensor_noise(depth, K, only("dropout", dropout={"prob": 0.1}), np.random.default_rng(9))
    assert (out == 0).mean() == pytest.approx(0.1, abs=0.01)


# ------------------------------------------------------------------------------------------ contract


def test_all_disabled_is_identity_and_input_untouched():
    depth = box_on_wall()
    depth[5:9, 5:9] = 0.0
    keep = depth.copy()
    out = simulate_sensor_noise(depth, K, only(), np.random.default_rng(0))
    assert out.dtype == np.float32
    assert np.array_equal(out, depth)
    out = simulate_sensor_noise(depth, K, NoiseModelConfig(), np.random.default_rng(0),
                                rgb=np.zeros((H, W, 3), np.uint8))
    assert np.array_equal(depth, keep)
    assert out.dtype == np.float32 and out.shape == depth.shape
    assert np.all(out[5:9, 5:9] == 0)  # input holes stay holes
    assert not np.array_equal(out, depth)


def test_input_holes_stay_holes_with_lateral_and_flying():
    depth = box_on_wall()
    depth[100:110, 20:30] = 0.0
    cfg = only("lateral", "flying_pixels", "axial", "quantization", lateral={"sigma_px": 3.0})
    out = simulate_sensor_noise(depth, K, cfg, np.random.default_rng(10))
    assert np.all(out[100:110, 20:30] == 0)


def test_frame_rng_deterministic_and_independent():
    a = frame_rng(1, "office", 3).random(5)
    assert np.array_equal(a, frame_rng(1, "office", 3).random(5))
    assert not np.array_equal(a, frame_rng(1, "office", 4).random(5))
    assert not np.array_equal(a, frame_rng(1, "kitchen", 3).random(5))
    assert not np.array_equal(a, frame_rng(2, "office", 3).random(5))
    depth = box_on_wall()
    o1 = simulate_sensor_noise(depth, K, NoiseModelConfig(), frame_rng(0, "s", 0))
    o2 = simulate_sensor_noise(depth, K, NoiseModelConfig(), frame_rng(0, "s", 0))
    assert np.array_equal(o1, o2)


def test_config_defaults():
    cfg = NoiseModelConfig()
    assert cfg.baseline_m == 0.075 and cfg.axial.scale == 1.0 and cfg.quantization.subpixel == 0.125
    assert cfg.grazing.start_deg == 70 and cfg.grazing.full_deg == 85
    assert cfg.range.min_m == 0.5 and cfg.range.max_m == 4.5 and cfg.shadow.side == "right"
    assert all(getattr(cfg, name).enabled for name in EFFECTS)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"colour": 1}, "colour"),
        ({"axial": {"enabled": True, "sigma": 2.0}}, "sigma"),
        ({"baseline_m": 0.0}, "baseline_m"),
        ({"quantization": {"subpixel": -0.1}}, "subpixel"),
        ({"flying_pixels": {"prob": 1.5}}, "prob"),
        ({"dropout": {"prob": -0.1}}, "prob"),
        ({"shadow": {"side": "up"}}, "side"),
        ({"grazing": {"start_deg": 85.0, "full_deg": 70.0}}, "start_deg"),
        ({"range": {"min_m": 5.0, "max_m": 4.0}}, "min_m"),
        ({"dark": {"threshold": 2.0}}, "threshold"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        NoiseModelConfig(**kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="depth"):
        simulate_sensor_noise(np.ones((2, 3, 4), np.float32), K, NoiseModelConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="rgb"):
        simulate_sensor_noise(wall(1.0, 8, 8), K, NoiseModelConfig(), np.random.default_rng(0),
                              rgb=np.zeros((8, 8, 3), np.float32))


# ------------------------------------------------------------------------------------- sensor prior


def test_expected_sigma_matches_the_empirical_spread_of_the_simulated_sensor():
    """Axial noise + quantisation on a fronto-parallel plane: the simulated spread is what the prior says."""
    from models.noise import SensorPrior, expected_sigma

    cfg = NoiseModelConfig(
        lateral={"enabled": False}, flying_pixels={"enabled": False}, shadow={"enabled": False},
        grazing={"enabled": False}, dark={"enabled": False}, dropout={"enabled": False}, range={"enabled": False},
    )
    prior = SensorPrior.from_noise(cfg)
    K = np.array([[580.0, 0, 100], [0, 580.0, 100], [0, 0, 1]])
    for z in (0.8, 2.0, 3.5):
        plane = np.full((200, 200), z, np.float32)
        noisy = simulate_sensor_noise(plane, K, cfg, np.random.default_rng(1))
        emp = float(np.sqrt(np.mean((noisy - z) ** 2)))
        assert emp == pytest.approx(float(expected_sigma(np.float32(z), prior)), rel=0.06), z
    # analytic: axial only, no quantisation
    no_q = prior.model_copy(update={"subpixel": 0.0})
    assert float(expected_sigma(np.float32(2.0), no_q)) == pytest.approx(0.0012 + 0.0019 * 1.6**2, rel=1e-6)
    assert float(expected_sigma(np.float32(0.0), prior)) > 0, "holes get the floor, never 0"


def test_trusted_measurements_exclude_holes_and_discontinuities_at_the_sensor_scale():
    from models.noise import SensorPrior, trusted_measurements

    prior = SensorPrior()
    depth = np.full((40, 60), 1.5, np.float32)
    depth[:, 30:] = 2.5  # a 1 m step at column 30
    depth[10, 10] = 0  # a hole
    native = trusted_measurements(depth, 580.0, prior)  # r = 1 px at the sensor's own resolution
    double = trusted_measurements(depth, 1160.0, prior)  # r = 2 px at twice its resolution
    assert not native[:, 28:32].any() and native[:, 27].all() and native[:, 32].all()
    assert not double[:, 27:33].any() and double[:, 26].all() and double[:, 33].all()
    assert not native[9:12, 8:13].any() and not native[8:13, 9:12].any() and native[10, 13] and native[8, 8]
    # noise alone (a plane at 3 m with the sensor's own spread) is not mistaken for discontinuities
    rng = np.random.default_rng(0)
    far = (3.0 + 0.016 * rng.standard_normal((60, 60))).astype(np.float32)
    assert trusted_measurements(far, 580.0, prior)[3:-3, 3:-3].mean() > 0.99
