"""Pools of trained models, the pretrained initializations, and the attack objective."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import datadistill
from datadistill.data import load_dataset
from datadistill.errors import DistillError
from datadistill.evaluate import EvalResult, evaluate
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.models import build_model
from datadistill.pools import Schedule, import_pool, load_pool, pretrain, train_models

QUICK = Schedule(epochs=3, lr=3e-3, decay_epochs=2)


@pytest.fixture(scope="module")
def digits_pool(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    pretrain("digits", models=6, out=out, schedule=QUICK, held_out=2, group=3, progress=False)
    return out


def test_pretrain_writes_a_split_pool_of_trained_models(digits_pool):
    pool = load_pool(digits_pool)
    manifest = pool.manifest
    assert len(pool) == 6 and manifest["distill"] == [0, 1, 2, 3] and manifest["held_out"] == [4, 5]
    assert manifest["arch"] == "mlp" and manifest["image_shape"] == [1, 8, 8]
    assert min(manifest["accuracies"]) > 0.8  # trained, not random (10 classes)
    assert (digits_pool / "manifest.json").is_file()
    held = pool.split("held_out")
    assert torch.equal(held.take(0, 2)["net.1.weight"], pool.params["net.1.weight"][4:6])
    drawn = pool.split("distill").sample(4, torch.Generator().manual_seed(0))["net.1.weight"]
    assert len({tuple(w.flatten()[:3].tolist()) for w in drawn}) == 4  # distinct within a draw


def test_models_trained_together_equal_models_trained_alone():
    data = load_dataset("digits")
    module = build_model("mlp", data.image_shape, data.num_classes)
    fmodel = FunctionalModel(module)
    inits = RandomInit(module).sample(3, torch.Generator().manual_seed(1))
    schedule = Schedule(epochs=1, lr=1e-3, decay_epochs=1)
    together = train_models(fmodel, inits, data, schedule, 64, torch.Generator().manual_seed(2),
                            progress=False)
    for i in range(3):
        alone = train_models(fmodel, {k: v[i:i + 1] for k, v in inits.items()}, data, schedule, 64,
                             torch.Generator().manual_seed(2), progress=False)
        for key in together:
            assert torch.allclose(together[key][i], alone[key][0], atol=1e-5)


def test_import_pool_reads_state_dicts_and_refuses_others(tmp_path, digits_pool):
    pool = load_pool(digits_pool)
    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(3):
        state = pool.model(i)
        if i % 2:
            save_file(state, folder / f"m{i}.safetensors")
        else:
            torch.save(state, folder / f"m{i}.pt")
    mine = import_pool(folder, "digits", tmp_path / "pool", held_out=1)
    assert torch.equal(mine.params["net.5.bias"], pool.params["net.5.bias"][:3])
    assert mine.manifest["accuracies"] == pytest.approx(pool.manifest["accuracies"][:3], abs=1e-6)
    torch.save({"weight": torch.zeros(3)}, folder / "m9.pt")
    with pytest.raises(DistillError, match="m9.pt is not a mlp state dict"):
        import_pool(folder, "digits", tmp_path / "pool2")


def test_missing_or_mismatched_pool_is_a_one_line_error(tmp_path, digits_pool):
    with pytest.raises(DistillError, match="needs --pool"):
        datadistill.distill(dataset="digits", init="pretrained-random", epochs=1, progress=False)
    with pytest.raises(DistillError, match="no pool in"):
        datadistill.distill(dataset="digits", init="pretrained-random", pool=str(tmp_path),
                            epochs=1, progress=False)
    with pytest.raises(DistillError, match="do not match the model"):
        datadistill.distill(dataset="digits28", model="mlp", init="pretrained-random",
                            pool=str(digits_pool), epochs=1, progress=False)


def test_attack_metrics_from_the_confusion_matrix():
    confusion = torch.tensor([[[8, 2, 0], [0, 10, 0], [1, 0, 9]],   # K=0: 2 of 10 went to T=1
                              [[0, 10, 0], [0, 10, 0], [0, 0, 10]]])  # all of K went to T
    result = EvalResult(torch.zeros(2), confusion, attack=(0, 1))
    metrics = result.attack_metrics()
    assert metrics["attack_ratio_mean"] == pytest.approx((0.2 + 1.0) / 2)
    # modified labels: net 0 gets 2 + 10 + 9 right of 30, net 1 gets 30 of 30
    assert metrics["modified_accuracy_mean"] == pytest.approx((21 / 30 + 1.0) / 2)
    assert result.accuracies.tolist() == pytest.approx([27 / 30, 20 / 30])


def test_attack_from_a_random_pretrained_pool_beats_label_flipping(tmp_path, digits_pool):
    run = tmp_path / "attack"
    result = datadistill.distill(
        dataset="digits", init="pretrained-random", pool=str(digits_pool), objective="attack",
        attack_class=3, target_class=8, steps=1, distill_epochs=1, images_per_class=1,
        epochs=60, batch_size=256, lr=0.02, progress=False, out=run)
    metrics = result.meta["metrics"]
    final, flipped = metrics["final"], metrics["random_real"]
    assert final["nets"] == 2  # the held-out models, each once
    assert final["attack_ratio_mean"] > 0.5
    assert final["attack_ratio_mean"] > flipped["attack_ratio_mean"]
    again = evaluate(run)
    assert again["after"]["attack_ratio_mean"] == pytest.approx(final["attack_ratio_mean"])
    assert again["before"]["attack_ratio_mean"] < 0.1  # trained models, before the step


def test_pretrained_fixed_adapts_its_own_model(tmp_path):
    """A barely trained model (about 30 % on digits) is lifted far above its own accuracy by
    the few distilled steps made for it."""
    weak = Schedule(epochs=1, lr=3e-4, decay_epochs=1)
    pretrain("digits", models=3, out=tmp_path, schedule=weak, held_out=1, group=3,
             progress=False)
    pool = load_pool(tmp_path)
    before = pool.manifest["accuracies"][pool.manifest["distill"][0]]
    result = datadistill.distill(dataset="digits", init="pretrained-fixed", pool=str(tmp_path),
                                 steps=2, distill_epochs=1, epochs=5, batch_size=256,
                                 distill_lr=0.3, image_init="real", progress=False)
    assert torch.equal(result.init["net.1.weight"], pool.params["net.1.weight"][0])
    assert before < 0.5
    assert result.meta["metrics"]["final"]["accuracy_mean"] > before + 0.2


def _image_folder(root, classes=2, per_class=2, size=40):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = (torch.rand(size, size, 3, generator=gen) * 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


def test_imagenet_alexnet_setting_runs_on_an_image_folder(tmp_path):
    from torchvision.models import alexnet

    weights = tmp_path / "alexnet-imagenet.pth"
    torch.save(alexnet(weights=None, num_classes=1000).state_dict(), weights)  # stands in for torchvision's file
    dataset = "folder:" + str(_image_folder(tmp_path / "images"))
    result = datadistill.distill(dataset=dataset, init="pretrained-fixed", weights=str(weights),
                                 steps=1, distill_epochs=3, images_per_class=1, epochs=1,
                                 batch_size=4, progress=False, out=tmp_path / "run")
    assert result.images.shape == (1, 2, 3, 224, 224)
    assert result.init["classifier.6.weight"].abs().sum() == 0  # the reset last layer
    assert torch.equal(result.init["classifier.6.bias"], torch.ones(2))
    stored = torch.load(weights, weights_only=True)
    assert torch.equal(result.init["features.0.weight"], stored["features.0.weight"])
    assert evaluate(tmp_path / "run")["after"]["nets"] == 1
    with pytest.raises(DistillError, match="needs train/ and test/"):
        datadistill.distill(dataset="folder:" + str(tmp_path), progress=False)
