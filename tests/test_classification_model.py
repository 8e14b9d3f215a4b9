"""The classifier wrapper, the layer-decayed optimiser, top-k scoring and the confusion matrix."""

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

import fibpolicy  # noqa: F401  (registers vit_fib_*)
from fibpolicy.training.classifier import ClassificationEvaluator, Classifier, classification_optimizer, topk_correct
from fibpolicy.training.confusion import confusion_matrix, write_confusion_matrix

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_vit(num_classes=4, **kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_fib_tiny_patch16_224", img_size=16, patch_size=4, depth=3, num_classes=num_classes, **kwargs)


def test_loss_smooths_in_training_only_and_mixes_even_batches():
    model = Classifier(_tiny_vit(), num_classes=4, label_smoothing=0.1, mixup={"mixup_alpha": 0.8, "cutmix_alpha": 0.0})
    batch = {"image": torch.randn(6, 3, 16, 16), "label": torch.tensor([0, 1, 2, 3, 0, 1])}
    model.eval()
    out = model.compute_loss(batch)
    with torch.no_grad():
        plain = nn.functional.cross_entropy(model(batch["image"]), batch["label"])
    torch.testing.assert_close(out["loss"], plain)
    assert float(out["acc"]) == float((model(batch["image"]).argmax(-1) == batch["label"]).float().mean())
    model.train()
    np.random.seed(0)
    mixed = model.compute_loss(batch)["loss"]
    mixed.backward()
    assert torch.isfinite(mixed) and model.backbone.head.weight.grad is not None
    odd = {"image": batch["image"][:5], "label": batch["label"][:5]}
    assert torch.isfinite(model.compute_loss(odd)["loss"])  # odd batch: trained without mixing


def test_multi_view_inputs_average_probabilities():
    model = Classifier(_tiny_vit(), num_classes=4).eval()
    views = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        probs = torch.stack([model(views[:, k]).softmax(-1) for k in range(3)], 1).mean(1)
        torch.testing.assert_close(model(views).exp(), probs)
    with pytest.raises(ValueError, match="dims"):
        model(torch.randn(16, 16))


def test_optimizer_folds_layer_decay_into_group_lrs():
    model = Classifier(_tiny_vit(), num_classes=4)
    opt = classification_optimizer(model, base_lr=1e-3, batch_size=64, weight_decay=0.05, layer_decay=0.5)
    lrs = [g["lr"] for g in opt.param_groups]
    peak = 1e-3 * 64 / 256
    assert lrs == sorted(lrs, reverse=True) and math.isclose(lrs[0], peak)
    # depth 3: scales 0.5 ** (4 - layer) for layers 0 (stem) .. 4 (head / final norm)
    assert sorted({round(lr / peak, 6) for lr in lrs}) == [0.0625, 0.125, 0.25, 0.5, 1.0]
    assert all("lr_scale" not in g for g in opt.param_groups)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model.backbone.cls_token)]["weight_decay"] == 0.0
    assert by_param[id(model.backbone.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="extra"):
        classification_optimizer(model)


def test_topk_and_evaluator_scores():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 0.0]])
    assert topk_correct(logits, torch.tensor([0, 0, 2]), (1, 2, 5)) == {1: 1, 2: 2, 5: 3}

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"image": torch.full((3, 16, 16), float(i)), "label": i % 4}

    model = Classifier(_tiny_vit(), num_classes=4).eval()
    evaluator = ClassificationEvaluator(Data(), batch_size=4)
    metrics = evaluator(model, 0)
    assert set(metrics) == {"test/top1", "test/top5", "test/loss"} and metrics["test/top5"] == 100.0
    assert evaluator.last_targets.tolist() == [i % 4 for i in range(10)]
    with torch.no_grad():
        expected = model(torch.stack([Data()[i]["image"] for i in range(10)])).argmax(-1).numpy()
    assert np.array_equal(evaluator.last_predictions, expected)
    assert math.isclose(metrics["test/top1"], 100.0 * float(np.mean(expected == evaluator.last_targets)))


def test_evaluator_scores_at_the_trainings_precision(monkeypatch):
    from fibpolicy import device as device_module

    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return {"image": torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(i)), "label": i % 4}

    model = Classifier(_tiny_vit(), num_classes=4).eval()
    dtypes = []
    model.backbone.head.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    fp32 = ClassificationEvaluator(Data(), batch_size=6, precision="fp32")(model)
    bf16 = ClassificationEvaluator(Data(), batch_size=6, precision="auto")(model)  # native bf16 (forced above)
    assert dtypes == [torch.float32, torch.bfloat16]
    assert bf16["test/loss"] != fp32["test/loss"] and bf16["test/loss"] == pytest.approx(fp32["test/loss"], rel=0.05)


def test_confusion_matrix_counts_and_png(tmp_path):
    m = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    path = tmp_path / "cm.png"
    write_confusion_matrix(path, np.array([0, 1, 1]), np.array([0, 1, 0]), ["zero", "one"], title="t")
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.width > 100
    assert (tmp_path / "cm.csv").read_text().splitlines()[1:] == ["zero,1,0", "one,1,1"]


def test_a_few_trainer_steps_on_a_separable_set_beat_chance(tmp_path):
    from fibpolicy.training import Trainer

    class Bright(torch.utils.data.Dataset):  # class = whether the image is bright or dark: trivially separable
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.labels = torch.randint(0, 2, (n,), generator=g)
            self.images = torch.rand(n, 3, 16, 16, generator=g) * 0.5 + self.labels[:, None, None, None] * 0.5

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return {"image": self.images[i], "label": int(self.labels[i])}

    model = Classifier(_tiny_vit(num_classes=2), num_classes=2)
    evaluator = ClassificationEvaluator(Bright(64, seed=1), batch_size=64, precision="fp32")
    untrained = evaluator(model.eval())["test/top1"]
    Trainer(model, Bright(128, seed=0), run_dir=tmp_path, num_epochs=6, batch_size=16, lr_warmup_steps=0,
            precision="fp32", progress=False, checkpoint_every_epochs=100, eval_every_epochs=100,
            optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)).fit()
    trained = evaluator(model.eval())["test/top1"]
    assert trained >= 90.0 and trained > untrained, (untrained, trained)
