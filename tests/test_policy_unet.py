"""1-D conditional U-Net: shapes, conditioning, reference sizes (counted on the meta device)."""

import math

import pytest
import torch

from fibpolicy.encoders import count_parameters
from fibpolicy.policy import ConditionalUnet1D, SinusoidalPosEmb


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.mark.parametrize("down_dims", [(16,), (16, 32), (16, 32, 64)])
def test_output_shape_matches_input(down_dims):
    torch.manual_seed(0)
    net = ConditionalUnet1D(input_dim=2, global_cond_dim=12, diffusion_step_embed_dim=16, down_dims=down_dims)
    x = torch.randn(3, 16, 2)
    out = net(x, torch.tensor([0, 5, 99]), global_cond=torch.randn(3, 12))
    assert out.shape == (3, 16, 2)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_conditioning_and_timestep_change_the_output():
    torch.manual_seed(0)
    net = ConditionalUnet1D(input_dim=2, global_cond_dim=8, diffusion_step_embed_dim=16, down_dims=(16, 32)).eval()
    x, cond = torch.randn(2, 16, 2), torch.randn(2, 8)
    base = net(x, 10, global_cond=cond)
    assert not torch.allclose(base, net(x, 10, global_cond=cond + 1.0))
    assert not torch.allclose(base, net(x, 60, global_cond=cond))
    torch.testing.assert_close(base, net(x, torch.tensor(10), global_cond=cond))  # int / 0-d / (B,) steps agree
    torch.testing.assert_close(base, net(x, torch.tensor([10, 10]), global_cond=cond))


def test_reference_sizes():
    with torch.device("meta"):
        image = ConditionalUnet1D(input_dim=2, global_cond_dim=(64 + 2) * 2)  # PushT image: ResNet 64 + agent_pos 2
        lowdim = ConditionalUnet1D(input_dim=2, global_cond_dim=20 * 2, diffusion_step_embed_dim=256, down_dims=(256, 512, 1024))
    assert count_parameters(image) == 251_511_938  # "~256 M" in the spec
    assert count_parameters(lowdim) == 65_783_298
    # FiLM: each block's Linear(cond, 2C) reads the 128-d step embedding plus the 132-d obs vector
    film = image.down_modules[0][0].cond_encoder[1]
    assert (film.in_features, film.out_features) == (128 + 132, 2 * 512)
    assert image.up_modules[0][0].blocks[0][0].in_channels == 2 * 2048
    assert isinstance(image.up_modules[-1][2], torch.nn.ConvTranspose1d)


def test_sinusoidal_embedding_formula():
    emb = SinusoidalPosEmb(8)(torch.tensor([0.0, 3.0]))
    freqs = torch.exp(torch.arange(4) * -math.log(10000) / 3)
    torch.testing.assert_close(emb[1], torch.cat([(3 * freqs).sin(), (3 * freqs).cos()]))
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_errors():
    net = ConditionalUnet1D(input_dim=2, global_cond_dim=4, diffusion_step_embed_dim=16, down_dims=(16, 32, 64))
    with pytest.raises(ValueError, match="not divisible by 4"):
        net(torch.randn(1, 10, 2), 0, global_cond=torch.randn(1, 4))
    with pytest.raises(ValueError, match="global_cond"):
        net(torch.randn(1, 16, 2), 0)
    with pytest.raises(ValueError, match="n_groups"):
        ConditionalUnet1D(input_dim=2, down_dims=(12,))
