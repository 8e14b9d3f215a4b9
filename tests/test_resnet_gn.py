"""Reference ResNet-18 encoder: GroupNorm everywhere, spatial soft-max keypoints, 64 features."""

import pytest
import torch
import torch.nn as nn

from fibpolicy.encoders import ResNet18GNEncoder
from fibpolicy.encoders.resnet import SpatialSoftmax, replace_batchnorm_with_groupnorm


pytestmark = pytest.mark.usefixtures("one_thread")


def test_groupnorm_everywhere_and_output_shape():
    torch.manual_seed(0)
    encoder = ResNet18GNEncoder()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    norms = [m for m in encoder.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 20 and all(m.num_groups == m.num_channels // 16 for m in norms)
    assert encoder.output_dim == 64
    assert sum(p.numel() for p in encoder.parameters()) == 11_197_088
    assert encoder.trunk(torch.randn(1, 3, 84, 84)).shape == (1, 512, 3, 3)
    out = encoder(torch.rand(2, 3, 84, 84) * 2 - 1)
    assert out.shape == (2, 64) and (out >= 0).all()  # ReLU after the linear layer
    assert ResNet18GNEncoder(in_chans=1)(torch.randn(1, 1, 76, 76)).shape == (1, 64)


def test_spatial_softmax_finds_the_peak():
    pool = SpatialSoftmax(in_channels=1, num_keypoints=1)
    with torch.no_grad():
        pool.keypoint_conv.weight.fill_(1.0)
        pool.keypoint_conv.bias.zero_()
    features = torch.zeros(1, 1, 5, 9)
    features[0, 0, 4, 2] = 100.0  # row 4 of 5 (y = +1), column 2 of 9 (x = -0.5)
    torch.testing.assert_close(pool(features), torch.tensor([[-0.5, 1.0]]), atol=1e-4, rtol=0)
    assert SpatialSoftmax(512, 32)(torch.randn(3, 512, 3, 3)).shape == (3, 64)


def test_replace_batchnorm_rejects_odd_channels():
    with pytest.raises(ValueError, match="not divisible"):
        replace_batchnorm_with_groupnorm(nn.Sequential(nn.BatchNorm2d(24)))
