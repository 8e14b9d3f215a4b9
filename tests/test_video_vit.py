"""The divided space-time video ViT: structure, image-ViT initialisation, temporal modelling, layer decay."""

import pytest
import timm
import torch

import fibpolicy  # noqa: F401  (registers vit_fib_video_*)
from fibpolicy.attention import FibottentionAttention
from fibpolicy.checkpoint import MODEL_FILE, save_checkpoint
from fibpolicy.encoders import VideoVisionTransformer, load_image_weights, video_variant
from fibpolicy.training.classifier import classification_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(img_size=16, patch_size=4, depth=2, num_classes=5)


def _video(attention="fib", seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model("vit_fib_video_tiny_patch16_224", num_frames=4, attention=attention, **{**SMALL, **kwargs})


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_registered(size):
    assert f"vit_fib_video_{size}_patch16_224" in timm.list_models("vit_fib_video_*")
    assert video_variant(f"vit_fib_{size}_patch16_224") == f"vit_fib_video_{size}_patch16_224"
    with pytest.raises(ValueError, match="no video ViT"):
        video_variant("resnet18")


def test_spatial_attention_is_fibottention_temporal_is_dense_and_twins_share_init():
    fib, dense = _video("fib"), _video("dense")
    assert isinstance(fib, VideoVisionTransformer)
    for i, block in enumerate(fib.blocks):
        assert isinstance(block.attn, FibottentionAttention) and block.attn.layer == i
        assert block.attn.pattern.num_prefix_tokens == 1
        assert type(block.temporal_attn).__name__ == "Attention"
        assert type(dense.blocks[i].attn).__name__ == "Attention"
        assert torch.count_nonzero(block.temporal_fc.weight) == 0
    sd_fib, sd_dense = fib.state_dict(), dense.state_dict()
    assert sd_fib.keys() == sd_dense.keys()
    assert all(torch.equal(sd_fib[k], sd_dense[k]) for k in sd_fib)
    clip = torch.randn(2, 3, 4, 16, 16)
    assert fib(clip).shape == (2, 5)
    assert fib.forward_features(clip).shape == (2, 1 + 4 * 16, 192)
    assert fib(torch.randn(1, 3, 6, 16, 16)).shape == (1, 5)  # other clip lengths resample time_embed
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        fib(torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("attention", ["fib", "dense"])
def test_from_image_weights_a_static_clip_equals_the_image_model(tmp_path, attention):
    torch.manual_seed(1)
    image = timm.create_model("vit_fib_tiny_patch16_224", attention=attention, **SMALL).eval()
    video = _video(attention, seed=2)
    # Through a fibpolicy checkpoint of an image classifier (keys prefixed by the wrapper's "backbone.").
    wrapper = torch.nn.Module()
    wrapper.backbone = image
    save_checkpoint(tmp_path / "ckpt", model=wrapper)
    report = load_image_weights(video, tmp_path / "ckpt" / MODEL_FILE)
    with pytest.raises(IsADirectoryError, match="resolve_checkpoint"):  # encoders know no run-directory layout
        load_image_weights(video, tmp_path / "ckpt")
    assert not report["skipped"] and set(report["initialised"]) == {
        "time_embed", *[f"blocks.{i}.temporal_fc.{p}" for i in range(2) for p in ("weight", "bias")]}
    assert len(report["temporal_from_spatial"]) == 2 * (4 + 2)  # qkv, proj (weight + bias) and norm per block
    video.eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(video(x[:, :, None].expand(3, 3, 4, 16, 16)), image(x), atol=1e-5, rtol=1e-5)


def test_image_weights_resample_patch_and_position_embeddings():
    torch.manual_seed(0)
    image = timm.create_model("vit_fib_tiny_patch16_224", img_size=48, patch_size=8, depth=2, num_classes=7)
    video = _video()
    report = load_image_weights(video, image.state_dict())
    assert set(report["resampled"]) == {"pos_embed", "patch_embed.proj.weight"}
    assert report["skipped"] == ["head.weight", "head.bias"]  # 7 classes vs 5


def test_a_fresh_video_vit_already_sees_frame_order():
    # With a zero temporal embedding a clip and its reversal give identical outputs, so "moving left"
    # and "moving right" could only be told apart after the embedding had grown from zero.
    video = _video().eval()
    assert video.time_embed.std() > 0.01
    clip = torch.randn(1, 3, 4, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(video(clip), video(clip.flip(2)), atol=1e-4)
        video.time_embed.zero_()
        torch.testing.assert_close(video(clip), video(clip.flip(2)), atol=1e-5, rtol=1e-5)


def test_time_embed_scale_is_a_constructor_argument():
    torch.manual_seed(0)
    assert 0.4 < float(_video().time_embed.detach().std()) < 0.6  # the default, 0.5
    assert 0.015 < float(_video(time_embed_std=0.02).time_embed.detach().std()) < 0.025
    assert not _video(time_embed_std=0.0).time_embed.any()
    with pytest.raises(ValueError, match="time_embed_std must be >= 0, got -1"):
        _video(time_embed_std=-1.0)


def test_temporal_order_matters_once_trained():
    video = _video().eval()
    with torch.no_grad():
        for block in video.blocks:
            block.temporal_fc.weight.normal_(0, 0.05)
        video.time_embed.normal_(0, 0.5)
    clip = torch.randn(1, 3, 4, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(video(clip), video(clip.flip(2)), atol=1e-4)


def test_layer_decay_groups_cover_video_parameters():
    video = _video(depth=3)
    opt = classification_optimizer(video, base_lr=1e-3, batch_size=256, layer_decay=0.5)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(video.time_embed)]["lr"] == by_param[id(video.pos_embed)]["lr"] == pytest.approx(1e-3 * 0.5**4)
    assert by_param[id(video.time_embed)]["weight_decay"] == 0.0
    assert by_param[id(video.blocks[2].temporal_fc.weight)]["lr"] == pytest.approx(1e-3 * 0.5)
    assert by_param[id(video.head.weight)]["lr"] == pytest.approx(1e-3)
