import pytest
import torch

from consingan.config import MODES, make_config
from consingan.core.image import stage_sizes
from consingan.core.networks import Discriminator, Generator, noise_size
from consingan.core.noise import fixed_noise, random_noise


def grown(config, n):
    G = Generator(config)
    for _ in range(n - 1):
        G.grow()
    return G


@pytest.mark.parametrize("mode", list(MODES))
def test_generator_output_has_stage_size_at_every_stage(mode):
    c = make_config(mode, nfc=4, train_stages=4, min_size=12, max_size=60, manualSeed=0)
    shapes = stage_sizes(40, 60, c)
    for k in range(len(shapes)):
        G = grown(c, k + 1)
        noise = random_noise(c, shapes[:k + 1], "cpu")
        out = G(noise, shapes[:k + 1], [1.0] * (k + 1))
        assert tuple(out.shape) == (1, 3, *shapes[k]), (mode, k)
        assert out.abs().max() <= 1


@pytest.mark.parametrize("mode", list(MODES))
def test_noise_shapes_per_mode(mode):
    c = make_config(mode, nfc=5, num_layer=3)
    border = mode in ("generation", "animation")
    assert noise_size(c, 0, (20, 30)) == (3, 20, 30)
    assert noise_size(c, 2, (20, 30)) == ((5, 26, 36) if border else (5, 20, 30))


def test_fixed_noise_per_mode():
    reals = [torch.rand(1, 3, 12, 18) * 2 - 1, torch.rand(1, 3, 20, 30) * 2 - 1]
    gen = make_config("generation", nfc=5)
    assert torch.equal(fixed_noise(gen, 0, reals), reals[0])
    assert torch.equal(fixed_noise(make_config("retarget", nfc=5), 0, reals), reals[0])
    anim = fixed_noise(make_config("animation", nfc=5), 0, reals)
    assert anim.shape == reals[0].shape and not torch.allclose(anim, reals[0])
    edit = fixed_noise(make_config("editing", nfc=5), 0, reals)
    assert 0.05 < (edit - reals[0]).std() < 0.15  # real + 0.1 * N(0, 1)
    assert fixed_noise(gen, 1, reals).shape == (1, 5, 26, 36)


def test_new_stage_starts_as_copy_of_previous():
    c = make_config("generation", nfc=4)
    G = Generator(c)
    G.grow()
    for a, b in zip(G.body[0].parameters(), G.body[1].parameters()):
        assert torch.equal(a, b) and a is not b


def test_discriminator_is_a_patch_map_without_norm():
    c = make_config("generation", nfc=4)
    D = Discriminator(c)
    assert D(torch.zeros(2, 3, 30, 40)).shape == (2, 1, 20, 30)  # 5 unpadded 3x3 convs
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())


def test_init_statistics():
    torch.manual_seed(0)
    c = make_config("harmonization", nfc=64)
    G = Generator(c)
    w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(w.mean()) < 2e-3 and abs(w.std() - 0.02) < 2e-3
    bn = torch.cat([m.weight for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(bn.mean() - 1) < 0.01 and bn.std() < 0.04


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sizes", [(25, 38, 31, 47), (60, 89, 121, 177), (10, 10, 10, 10), (5, 7, 1, 9),
                                   (115, 171, 173, 256)])
def test_matrix_upsampling_equals_torch_bicubic(sizes, channels_last):
    from consingan.core.networks import upsample_interpolate, upsample_matmul

    h, w, H, W = sizes
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 5, h, w, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
    a, b = upsample_interpolate(x, (H, W)), upsample_matmul(x, (H, W), block=16)
    assert a.shape == b.shape == (2, 5, H, W)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    g = torch.randn_like(a)
    (ga,), (gb,) = torch.autograd.grad(a, x, g), torch.autograd.grad(b, x, g)
    assert torch.allclose(ga, gb, rtol=0, atol=1e-12)
