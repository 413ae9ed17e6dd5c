"""The vanilla NeRF reference field."""

from __future__ import annotations

import math

import torch

from models.nerf.rendering import render_rays
from models.nerf.vanilla import VanillaNeRF, VanillaNeRFConfig, positional_encoding


def test_positional_encoding_values_and_shape():
    x = torch.tensor([[0.25, -0.5, 1.0]])
    enc = positional_encoding(x, 2)
    assert enc.shape == (1, 3 * (1 + 2 * 2))
    torch.testing.assert_close(enc[0, :3], x[0])
    # layout after x: sin(f0 x), sin(f1 x), cos(f0 x), cos(f1 x), each over the 3 coordinates
    torch.testing.assert_close(enc[0, 3:6], torch.sin(math.pi * x[0]))
    torch.testing.assert_close(enc[0, 6:9], torch.sin(2 * math.pi * x[0]))
    torch.testing.assert_close(enc[0, 9:12], torch.cos(math.pi * x[0]))
    assert torch.equal(positional_encoding(x, 0), x)


def test_paper_architecture_and_outputs():
    net = VanillaNeRF(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert len(net.trunk) == 8 and net.trunk[0].in_features == 63 and net.trunk[4].in_features == 256 + 63
    assert net.color[0].in_features == 256 + 27
    x = torch.rand(50, 3) * 4 - 2  # some points outside the box
    rgb, sigma = net(x, torch.nn.functional.normalize(torch.randn(50, 3), dim=-1))
    assert rgb.shape == (50, 3) and sigma.shape == (50,)
    assert torch.all((rgb >= 0) & (rgb <= 1)) and torch.all(sigma >= 0)
    outside = (x.abs() > 1).any(-1)
    assert torch.all(sigma[outside] == 0)


def test_small_vanilla_field_fits_a_constant_colour_through_the_renderer():
    gen = torch.Generator().manual_seed(0)
    net = VanillaNeRF(VanillaNeRFConfig(depth=3, width=32, skip_layer=2, n_freq_xyz=4, n_freq_dir=2), generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    o = torch.zeros(64, 3) - torch.tensor([0.0, 0.0, 3.0])
    d = torch.nn.functional.normalize(torch.randn(64, 3, generator=gen) * 0.1 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    target = torch.tensor([0.2, 0.6, 0.3])
    losses = []
    for _ in range(80):
        out = render_rays(net, o, d, 2.0, 4.0, n_coarse=16, n_fine=8, perturb=True, background=torch.zeros(3),
                          generator=gen)
        loss = ((out.rgb - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_the_init_is_drawn_from_the_generator_only():
    cfg = VanillaNeRFConfig(depth=3, width=16, skip_layer=2, n_freq_xyz=2, n_freq_dir=1)
    rng = torch.random.get_rng_state()
    a, b = (VanillaNeRF(cfg, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    c = VanillaNeRF(cfg, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.random.get_rng_state(), rng)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values(),
                                  strict=True):
        assert torch.equal(pa, pb), name
        assert name == "aabb" or not torch.equal(pa, pc), name
    # PyTorch's nn.Linear default, from the generator: the same numbers as nn.Linear after manual_seed.
    torch.manual_seed(3)
    reference = torch.nn.Linear(a.trunk[0].in_features, a.trunk[0].out_features)
    torch.set_rng_state(rng)
    torch.testing.assert_close(a.trunk[0].weight, reference.weight, rtol=0, atol=0)
    torch.testing.assert_close(a.trunk[0].bias, reference.bias, rtol=0, atol=0)
