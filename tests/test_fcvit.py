"""FCViT: parameter counts pinned to the spec's derived totals, the release's structure, timm interface."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import fibpolicy  # noqa: F401  (registers the timm models)
from fibpolicy.encoders.fcvit import FCViT, GlobalContext, stem_stride_for

# shared/specs/fcvit_and_sparse_patterns.md, "Parameter check [derived]" (1000 classes).
SPEC_TOTALS = {"fcvit_tiny": 4_784_752, "fcvit_b12": 14_701_832, "fcvit_b24": 26_960_232, "fcvit_b48": 51_477_032}
# One torch thread: small convolutions crawl with 2 OpenMP threads on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

SPEC_BLOCKS = {"fcvit_tiny": (30_256, 94_752, 284_792, 1_043_152), "fcvit_b12": (94_752, 326_656, 1_043_152, 2_578_336)}


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _block_formula(c: int, ratio: int) -> int:
    """The spec's per-block count, written out independently of the model code."""
    hd, m = ratio * c, max(c // 8, 16)
    gc = c * c // 4 + c // 4 + c * c // 8 + c + 16
    return 6 * c + 2 * gc + 2 * 122 * c + 2 * (2 * c * m + m + c) + (2 * c * hd + hd + c + 10 * hd)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return timm.create_model("fcvit_tiny")


@pytest.mark.parametrize("name", sorted(SPEC_TOTALS))
def test_parameter_counts_equal_the_spec(name):
    with torch.device("meta"):  # counts only: no memory, no init cost
        model = timm.create_model(name)
    assert _n(model) == SPEC_TOTALS[name]
    # The README's 4.6M / 14M / 25.7M / 49.1M are these counts in units of 2^20.
    assert round(_n(model) / 2**20, 1) == {"fcvit_tiny": 4.6, "fcvit_b12": 14.0, "fcvit_b24": 25.7, "fcvit_b48": 49.1}[name]


@pytest.mark.parametrize("name", sorted(SPEC_BLOCKS))
def test_per_block_counts_follow_the_formula(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    for stage, (index, ratio) in enumerate(zip(model.stage_indices, (8, 8, 4, 4))):
        block = model.network[index][0]
        assert _n(block) == SPEC_BLOCKS[name][stage] == _block_formula(model.dims[stage], ratio)


def test_counts_do_not_depend_on_input_size_or_stem_but_on_classes():
    with torch.device("meta"):
        assert _n(timm.create_model("fcvit_tiny", img_size=32)) == SPEC_TOTALS["fcvit_tiny"]
        assert _n(timm.create_model("fcvit_tiny", img_size=84)) == SPEC_TOTALS["fcvit_tiny"]
        assert _n(timm.create_model("fcvit_tiny", num_classes=10)) == SPEC_TOTALS["fcvit_tiny"] - 990 * 321
        assert _n(timm.create_model("fcvit_tiny", num_classes=0)) == SPEC_TOTALS["fcvit_tiny"] - 1000 * 321


@pytest.mark.parametrize(
    "size, stride, maps",
    [(32, 1, (32, 16, 8, 4)), (64, 2, (32, 16, 8, 4)), (84, 2, (42, 21, 11, 6)), (96, 2, (48, 24, 12, 6)),
     (224, 4, (56, 28, 14, 7))],
)
def test_shapes_at_several_input_sizes(size, stride, maps):
    model = timm.create_model("fcvit_tiny", img_size=size, num_classes=7).eval()
    assert model.stem_stride == stride == stem_stride_for(size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        stages = model.forward_intermediates(x, intermediates_only=True)
        final, _ = model.forward_intermediates(x, indices=1)
        features = model.forward_features(x)
        logits = model(x)
    assert [tuple(s.shape[1:]) for s in stages] == [(c, m, m) for c, m in zip((32, 64, 160, 320), maps)]
    assert features.shape == (2, 320, maps[-1], maps[-1])
    torch.testing.assert_close(final, features)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(model.forward_head(features), logits)
    assert [f["reduction"] for f in model.feature_info] == [stride * 2**i for i in range(4)]


def test_timm_cnn_interface(tiny):
    assert tiny.num_features == 320 and tiny.get_classifier().out_features == 1000
    assert tiny.pretrained_cfg["crop_pct"] == 0.9 and tiny.pretrained_cfg["first_conv"] == "patch_embed.proj"
    model = timm.create_model("fcvit_tiny", img_size=32, num_classes=0, in_chans=1, global_pool="token")
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 320)  # 'token' (the ViT task default) pools by averaging: no class token
    torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), model.forward_features(x).mean((2, 3)))
    model.reset_classifier(5, global_pool="catavgmax")
    assert model.num_features == 640 and model(x).shape == (2, 5)
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("fcvit_tiny", global_pool="cls")
    with pytest.raises(ValueError, match="no weights"):
        timm.create_model("fcvit_tiny", pretrained=True)
    # The classification builder passes the task's ViT geometry to every backbone: accepted, no effect.
    assert _n(timm.create_model("fcvit_tiny", img_size=32, patch_size=4, drop_path_rate=0.1)) == SPEC_TOTALS["fcvit_tiny"]


def test_release_structure(tiny):
    block = tiny.network[0][0]
    assert isinstance(block.norm1, nn.GroupNorm) and block.norm1.num_groups == 1 and block.norm1.eps == 1e-5
    assert isinstance(tiny.norm, nn.GroupNorm) and tiny.norm.num_groups == 1
    assert torch.equal(block.layer_scale_1, torch.full((32,), 1e-5))
    mixer = block.token_mixer
    for dw in (mixer.dw1, mixer.dw2):
        assert dw.kernel_size == (11, 11) and dw.padding == (5, 5) and dw.groups == 32 and dw.bias is not None
    assert [m.out_channels for m in mixer.fc1 if isinstance(m, nn.Conv2d)] == [16, 32]  # max(C/8, 16)
    big = tiny.network[6][0].token_mixer
    assert [m.out_channels for m in big.fc1 if isinstance(m, nn.Conv2d)] == [40, 320]
    assert (mixer.gc1.fc1.out_features, mixer.gc1.fc2.in_features) == (8, 4)  # 2C/8 -> maxout -> C/8
    mlp = block.channel_mixer
    assert (mlp.fc1.out_channels, mlp.dwconv.kernel_size, mlp.dwconv.groups) == (256, (3, 3), 256)
    assert tiny.patch_embed.proj.kernel_size == (7, 7) and tiny.patch_embed.proj.stride == (4, 4)
    assert isinstance(tiny.patch_embed.norm, nn.BatchNorm2d)
    assert [type(m).__name__ for m in tiny.network] == ["Sequential", "ConvEmbed"] * 3 + ["Sequential"]
    keys = tiny.state_dict().keys()
    for key in ("network.0.0.token_mixer.gc1.rescale_weight", "network.0.0.token_mixer.fc1.2.weight",
                "network.1.proj.weight", "network.6.1.layer_scale_2", "head.weight"):
        assert key in keys  # the release's module names


def test_drop_path_grows_linearly_to_the_rate():
    model = FCViT(drop_path_rate=0.2, num_classes=0)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for i in model.stage_indices for b in model.network[i]]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert rates == pytest.approx([0.2 * i / 12 for i in range(13)])


def test_global_context_is_a_normalised_rank_one_map_per_group():
    torch.manual_seed(0)
    gc = GlobalContext(32)
    x = torch.randn(3, 32, 5, 6)
    out = gc(x)
    # Recompute from the definition: similarity of each token to the mean token per group of 4 channels.
    groups = x.reshape(3, 8, 4, 30)
    g = x.mean((2, 3)).reshape(3, 8, 4, 1)
    sim = (groups * g).sum(2) / 2.0  # d^-0.5 with d = 4
    sim = (sim - sim.mean((1, 2), keepdim=True)) / (sim.std((1, 2), keepdim=True) + 1e-5)
    hidden = gc.fc1(x.mean((2, 3)))
    channel = gc.fc2(torch.maximum(hidden[:, :4], hidden[:, 4:]))
    expected = (sim.unsqueeze(2) * channel.reshape(3, 8, 4, 1)).reshape(3, 32, 5, 6)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="divisible"):
        GlobalContext(20)


def test_channels_last_activations_compute_the_same_function():
    torch.manual_seed(0)
    fast = timm.create_model("fcvit_tiny", img_size=32, num_classes=3).eval()
    plain = timm.create_model("fcvit_tiny", img_size=32, num_classes=3, channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)
        assert fast.forward_features(x).is_contiguous()
    assert all(p.is_contiguous() for p in fast.parameters())  # safetensors-friendly


def test_trains_one_step_with_finite_gradients():
    torch.manual_seed(0)
    model = timm.create_model("fcvit_tiny", img_size=32, num_classes=10, drop_path_rate=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_feature_encoder_gives_the_pooled_vector_and_the_grid():
    from fibpolicy.encoders import create_feature_encoder

    encoder = create_feature_encoder("fcvit_tiny", img_size=84, pool="mean")
    x = torch.randn(2, 3, 84, 84)
    assert encoder.output_dim == 320
    assert encoder(x).shape == (2, 320) and encoder.token_grid(x).shape == (2, 320, 6, 6)
