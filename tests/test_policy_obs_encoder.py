"""Observation encoder: crops, shared vs per-camera encoders, named encoders, robomimic-like key sets."""

import pytest
import torch

from functools import partial

import torch.nn as nn

from fibpolicy.encoders import ResNet18GNEncoder, ViTFeatureEncoder, count_parameters, create_feature_encoder, create_resnet18_gn_encoder
from fibpolicy.policy import MultiImageObsEncoder, crop_images
from fibpolicy.attention import FibottentionAttention

TINY_VIT = dict(model_name="vit_fib_tiny_patch16_224", patch_size=12, embed_dim=16, depth=1, num_heads=2)
TINY_FIB = partial(create_feature_encoder, **TINY_VIT)
TINY_DENSE = partial(create_feature_encoder, **TINY_VIT, attention="dense")

PUSHT = {"obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
         "action": {"shape": [2]}}
ROBOMIMIC = {
    "obs": {
        "agentview_image": {"shape": [3, 84, 84], "type": "rgb"},
        "robot0_eye_in_hand_image": {"shape": [3, 84, 84], "type": "rgb"},
        "robot0_eef_pos": {"shape": [3], "type": "low_dim"},
        "robot0_eef_quat": {"shape": [4], "type": "low_dim"},
        "robot0_gripper_qpos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [10]},
}


pytestmark = pytest.mark.usefixtures("one_thread")



def position_images(n, size=96):
    """Images whose pixel (r, c) holds r * 1000 + c in every channel, so a crop reveals its offset."""
    grid = torch.arange(size)[:, None] * 1000 + torch.arange(size)[None, :]
    return grid.float().expand(n, 3, size, size).clone()


def offsets(crops):
    corner = crops[:, 0, 0, 0].long()
    return corner // 1000, corner % 1000


def test_random_crop_per_image_in_training_centre_crop_in_eval():
    images = position_images(64)
    torch.manual_seed(0)
    crops = crop_images(images, (84, 84), random=True)
    tops, lefts = offsets(crops)
    assert crops.shape == (64, 3, 84, 84)
    assert len(set(zip(tops.tolist(), lefts.tolist()))) > 20  # independent offsets per image
    assert tops.min() >= 0 and tops.max() <= 12 and lefts.max() <= 12
    for i in range(0, 64, 9):  # every crop is a contiguous window of its image
        torch.testing.assert_close(crops[i], images[i, :, tops[i] : tops[i] + 84, lefts[i] : lefts[i] + 84])
    centre = crop_images(images, (84, 84), random=False)
    torch.testing.assert_close(centre, images[:, :, 6:90, 6:90])


def test_encoder_crops_randomly_only_in_training():
    encoder = MultiImageObsEncoder(PUSHT, image_encoder=TINY_FIB, crop_shape=84)
    images = position_images(8)
    torch.manual_seed(0)
    train_a, train_b = encoder.crop("image", images), encoder.crop("image", images)
    assert not torch.equal(train_a, train_b)
    encoder.eval()
    torch.testing.assert_close(encoder.crop("image", images), images[:, :, 6:90, 6:90])
    obs = {"image": torch.rand(8, 3, 96, 96) * 2 - 1, "agent_pos": torch.randn(8, 2)}
    torch.testing.assert_close(encoder(obs), encoder(obs))  # eval is deterministic
    assert encoder(obs).shape == (8, 16 + 2) and encoder.output_dim == 18
    torch.testing.assert_close(encoder(obs)[:, -2:], obs["agent_pos"])  # cameras first, then low-dim keys


def test_shared_vs_separate_encoders_and_robomimic_keys():
    separate = MultiImageObsEncoder(ROBOMIMIC, image_encoder=TINY_DENSE, crop_shape=76)
    shared = MultiImageObsEncoder(ROBOMIMIC, image_encoder=TINY_DENSE, crop_shape=76,
                                  share_encoder=True)
    single = count_parameters(separate.encoder_for("agentview_image"))
    assert count_parameters(separate) == 2 * single and count_parameters(shared) == single
    assert separate.encoder_for("agentview_image") is not separate.encoder_for("robot0_eye_in_hand_image")
    assert shared.encoder_for("agentview_image") is shared.encoder_for("robot0_eye_in_hand_image")
    assert len(shared.state_dict()) == len(separate.state_dict()) // 2  # no duplicated (aliased) tensors
    assert separate.output_dim == shared.output_dim == 2 * 16 + 3 + 4 + 2
    obs = {k: torch.randn(6, *m["shape"]) for k, m in ROBOMIMIC["obs"].items()}
    assert separate(obs).shape == shared(obs).shape == (6, 41)
    assert not any(isinstance(m, FibottentionAttention) for m in separate.modules())


def test_named_encoders_module_and_factory():
    fib = MultiImageObsEncoder(PUSHT, image_encoder=TINY_FIB, crop_shape=84)
    assert isinstance(fib.encoder_for("image"), ViTFeatureEncoder)
    assert any(isinstance(m, FibottentionAttention) for m in fib.modules())
    assert fib.encoder_for("image").vit.patch_embed.img_size == (84, 84)

    resnet = MultiImageObsEncoder(PUSHT, image_encoder=create_resnet18_gn_encoder, crop_shape=84)
    named = MultiImageObsEncoder(PUSHT, image_encoder="vit_fib_tiny_patch16_224", crop_shape=84)  # a timm name
    assert named.encoder_for("image").vit.patch_embed.img_size == (84, 84) and named.output_dim == 192 + 2
    assert isinstance(resnet.encoder_for("image"), ResNet18GNEncoder) and resnet.output_dim == 64 + 2

    class Tiny(nn.Module):  # no output_dim: inferred from a dummy forward
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=4)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    two_cams = {"obs": {k: v for k, v in ROBOMIMIC["obs"].items() if "image" in k}, "action": {"shape": [7]}}
    from_module = MultiImageObsEncoder(two_cams, image_encoder=Tiny(), crop_shape=None)
    from_factory = MultiImageObsEncoder(two_cams, image_encoder=lambda img_size, in_chans: Tiny(), crop_shape=None, share_encoder=True)
    assert from_module.output_dim == from_factory.output_dim == 8
    assert count_parameters(from_module) == 2 * count_parameters(from_factory)

    lowdim = MultiImageObsEncoder({"obs": {"keypoint": {"shape": [9, 2]}, "agent_pos": {"shape": [2]}}, "action": {"shape": [2]}})
    assert lowdim.output_dim == 20 and count_parameters(lowdim) == 0
    x = {"keypoint": torch.randn(5, 9, 2), "agent_pos": torch.randn(5, 2)}
    torch.testing.assert_close(lowdim(x), torch.cat([x["keypoint"].reshape(5, 18), x["agent_pos"]], 1))


def test_errors():
    with pytest.raises(ValueError, match="does not fit"):
        MultiImageObsEncoder(PUSHT, image_encoder=create_resnet18_gn_encoder, crop_shape=100)
    with pytest.raises(ValueError, match="'vgg' is not a timm-registered model"):
        MultiImageObsEncoder(PUSHT, image_encoder="vgg")
    with pytest.raises(ValueError, match="type must be one of"):
        MultiImageObsEncoder({"obs": {"image": {"shape": [3, 8, 8], "type": "depth"}}, "action": {"shape": [2]}})
    encoder = MultiImageObsEncoder(PUSHT, image_encoder=TINY_FIB)
    with pytest.raises(KeyError, match="agent_pos"):
        encoder({"image": torch.rand(2, 3, 96, 96)})
    with pytest.raises(ValueError, match=r"obs 'image': expected \(N, 3, 96, 96\)"):
        encoder({"image": torch.rand(2, 3, 84, 84), "agent_pos": torch.rand(2, 2)})
