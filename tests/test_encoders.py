"""Fibottention ViTs in timm's registry, their dense twins, and the feature interface."""

import pytest
import timm
import torch

import fibpolicy  # noqa: F401  (registers vit_fib_*)
from fibpolicy.attention import FibottentionAttention
from fibpolicy.encoders import ViTFeatureEncoder, create_vit_encoder, vision_transformer


@pytest.mark.parametrize("name", ["vit_fib_tiny_patch16_224", "vit_fib_small_patch16_224", "vit_fib_base_patch16_224"])
def test_registered_in_timm(name):
    assert name in timm.list_models("vit_fib_*")


def test_create_model_with_robot_settings():
    model = timm.create_model("vit_fib_base_patch16_224", img_size=84, patch_size=8, num_classes=0)
    assert model.patch_embed.num_patches == 100
    for index, block in enumerate(model.blocks):
        assert isinstance(block.attn, FibottentionAttention)
        assert block.attn.layer == index
        assert block.attn.pattern.num_prefix_tokens == 1
    out = model(torch.randn(2, 3, 84, 84))
    assert out.shape == (2, 768)


def test_options_reach_every_block_and_prefix_counts_registers():
    model = timm.create_model(
        "vit_fib_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10, reg_tokens=2,
        mode="additive", backend="sparse", modified=True, w_max=30,
    )
    attn = model.blocks[7].attn
    assert (attn.mode, attn.backend, attn.pattern.modified, attn.pattern.w_max) == ("additive", "sparse", True, 30)
    assert attn.pattern.num_prefix_tokens == 3
    logits = model(torch.randn(3, 3, 32, 32))
    logits.sum().backward()
    assert logits.shape == (3, 10)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_timm_vit_weights_load_into_the_fibottention_vit():
    dense = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5)
    fib = timm.create_model("vit_fib_tiny_patch16_224", img_size=64, num_classes=5)
    result = fib.load_state_dict(dense.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(fib(x), dense(x))


def test_dense_twin_has_identical_size_and_initialisation():
    torch.manual_seed(0)
    fib = vision_transformer("vit_fib", img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=3, num_classes=7)
    torch.manual_seed(0)
    dense = vision_transformer("vit_fib", attention="dense", img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=3, num_classes=7)
    fib_state, dense_state = fib.state_dict(), dense.state_dict()
    assert fib_state.keys() == dense_state.keys()
    assert all(torch.equal(fib_state[k], dense_state[k]) for k in fib_state)
    assert not isinstance(dense.blocks[0].attn, FibottentionAttention)


def test_builder_errors_are_clear():
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("vit_fib_tiny_patch16_224", pretrained=True)
    with pytest.raises(ValueError, match="attention"):
        vision_transformer(attention="sparse")
    with pytest.raises(ValueError, match="attention='dense'"):
        vision_transformer(attention="dense", mode="additive")


@pytest.mark.parametrize("pool, width", [("mean", 192), ("cls", 192), ("both", 384), ("map", 192), ("spatial_softmax", 64)])
def test_feature_encoder_pools(pool, width):
    enc = create_vit_encoder("vit_fib_tiny_patch16_224", img_size=32, patch_size=8, pool=pool, depth=2)
    assert enc.output_dim == width
    images = torch.randn(2, 3, 32, 32)
    feats = enc(images)
    assert feats.shape == (2, width)
    tokens = enc.vit.forward_features(images)
    if pool == "mean":
        torch.testing.assert_close(feats, tokens[:, 1:].mean(1))
    if pool == "cls":
        torch.testing.assert_close(feats, tokens[:, 0])
    if pool == "map":
        assert enc.vit.attn_pool is not None
        torch.testing.assert_close(feats, enc.vit.attn_pool(tokens[:, 1:]))  # over the patch tokens
    if pool == "spatial_softmax":  # keypoints of the same token grid token_grid() gives
        torch.testing.assert_close(feats, enc.keypoints(enc.token_grid(images)))
        assert feats.abs().max() <= 1.0


def test_spatial_softmax_features_follow_the_object_and_the_mean_does_not():
    # A bright square at two places: the mean of a position-free map is the same, keypoints move.
    enc = create_vit_encoder("vit_fib_tiny_patch16_224", img_size=32, patch_size=8, pool="spatial_softmax", depth=1)
    torch.nn.init.zeros_(enc.vit.pos_embed)
    images = torch.zeros(2, 3, 32, 32)
    images[0, :, 0:8, 0:8] = 1.0
    images[1, :, 24:32, 24:32] = 1.0
    grid = enc.token_grid(images)
    torch.testing.assert_close(grid[0].mean((1, 2)), grid[1].mean((1, 2)), atol=1e-5, rtol=1e-4)
    feats = enc(images)
    assert (feats[0] - feats[1]).abs().max() > 1e-3


def test_token_grid_keeps_raster_order():
    enc = create_vit_encoder("vit_fib_tiny_patch16_224", img_size=48, patch_size=8)
    images = torch.randn(2, 3, 48, 48)
    grid = enc.token_grid(images)
    assert grid.shape == (2, 192, 6, 6)
    tokens = enc.vit.forward_features(images)
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, 1 + 1 * 6 + 2])
    timm_grid = enc.vit.forward_intermediates(images, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)[-1]
    torch.testing.assert_close(grid, timm_grid)  # the same grid timm's own intermediates API gives


def test_feature_encoder_errors():
    vit = timm.create_model("vit_fib_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0, class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="class token"):
        ViTFeatureEncoder(vit, pool="cls")
    with pytest.raises(ValueError, match="pool"):
        ViTFeatureEncoder(vit, pool="max")
    enc = ViTFeatureEncoder(vit, pool="mean")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        enc(torch.randn(3, 32, 32))
    assert enc(torch.randn(1, 3, 32, 32)).shape == (1, 192)


def test_one_model_serves_several_image_sizes():
    model = timm.create_model("vit_fib_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0, dynamic_img_size=True)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 192)
    assert model(torch.randn(1, 3, 64, 48)).shape == (1, 192)
