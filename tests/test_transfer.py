"""Transfer learning: pretrained weights, head replacement across the zoo, freezing, embeddings."""

import numpy as np
import pytest
import torch
import torchvision

from cnnlab import CnnlabError, create_model, list_models, model_card
from cnnlab.cli import main
from cnnlab.data.memory import balanced_subset, load
from cnnlab.train import TrainConfig, train
from cnnlab.runs import load_checkpoint
from cnnlab.transfer import embed, freeze_backbone, heads, load_pretrained
from cnnlab.transfer.weights import head_keys


@pytest.mark.parametrize("name", list_models())
def test_head_replacement_never_size_mismatches(name, tmp_path):
    """Weights for the paper's class count load into a model for 5 classes: backbone loaded, heads
    (auxiliary ones included) new."""
    with torch.device("meta"):
        src = create_model(name)
        dst = create_model(name, num_classes=5)
    keys = head_keys(name)
    assert keys, f"{name}: no head found"
    # a state_dict on the meta device is enough to check which tensors would load
    report = _dry_load(dst, name, src.state_dict())
    assert set(report.new) == keys
    assert not (set(report.loaded) & keys)
    names = heads(dst, name)
    assert sorted(names) == sorted({k.rsplit(".", 1)[0] for k in keys})  # every head module, once
    # heads() puts the main head last (features mode, embed and --unfreeze rely on it): the one head that runs
    # in eval mode, where the auxiliary classifiers are skipped and the model returns the main head's logits
    assert _heads_run_in_eval(dst, name, names) == [names[-1]]
    if any(k.lower().startswith("aux") for k in keys):
        assert any(n.lower().startswith("aux") for n in names) and not names[-1].lower().startswith("aux")


def _heads_run_in_eval(model, name, names) -> list[str]:
    called = []
    hooks = [model.get_submodule(n).register_forward_hook(lambda *_, n=n: called.append(n)) for n in names]
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, *model_card(name).input_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    assert isinstance(out, torch.Tensor) and out.shape == (1, 5)
    return called


def _dry_load(model, name, sd):
    from cnnlab.transfer import weights

    orig = weights._read_source
    weights._read_source = lambda n, s: weights._Weights(sd, "test", None, None, None, {})
    model.load_state_dict = lambda *a, **k: None  # meta tensors: compare shapes only
    try:
        return load_pretrained(model, name, "x")
    finally:
        weights._read_source = orig


@pytest.mark.slow
def test_torchvision_state_dict_file_loads_and_gives_identical_outputs(tmp_path):
    theirs = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(theirs.state_dict(), path)
    ours = create_model("resnet18").eval()
    report = load_pretrained(ours, "resnet18", str(path))
    assert not report.new and len(report.loaded) == len(theirs.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    # a new class count keeps the backbone and builds a fresh fc
    ten = create_model("resnet18", num_classes=10)
    report = load_pretrained(ten, "resnet18", str(path))
    assert sorted(report.new) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(ten.conv1.weight, theirs.conv1.weight)


@pytest.mark.slow
def test_weights_of_another_architecture_or_a_corrupt_file_are_refused(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(create_model("vgg11").state_dict(), path)
    with pytest.raises(CnnlabError, match="is not a resnet18"):
        load_pretrained(create_model("resnet18"), "resnet18", str(path))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(CnnlabError, match="not a readable weights file"):
        load_pretrained(create_model("resnet18"), "resnet18", str(bad))
    with pytest.raises(CnnlabError, match="choose from"):
        load_pretrained(create_model("resnet18"), "resnet18", "IMAGENET9K_V7")
    with pytest.raises(CnnlabError, match="no torchvision weights"):
        load_pretrained(create_model("resnet20"), "resnet20", "IMAGENET1K_V1")


@pytest.mark.slow
def test_feature_extraction_freezes_the_backbone_and_its_batchnorm():
    m = create_model("resnet18", num_classes=4)
    trainable = freeze_backbone(m, heads(m, "resnet18"))
    assert trainable == ["fc"]
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    m.train()
    assert m.training and m.fc.training and not m.bn1.training and not m.layer4[1].bn2.training
    before = m.bn1.running_mean.clone()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    frozen = {n: p.clone() for n, p in m.named_parameters() if not p.requires_grad}
    for _ in range(2):
        loss = m(torch.randn(4, 3, 32, 32)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if n in frozen)
    assert torch.equal(m.bn1.running_mean, before)
    m2 = create_model("resnet18", num_classes=4)
    assert freeze_backbone(m2, heads(m2, "resnet18"), unfreeze=2) == ["fc", "layer4.0", "layer4.1"]


def test_balanced_subset_is_a_labelled_budget():
    ds = load("mnist", "train")
    sub = balanced_subset(ds, 1000, seed=1)
    assert len(sub) == 1000 and torch.bincount(sub.labels, minlength=10).tolist() == [100] * 10
    assert torch.equal(balanced_subset(ds, 1000, seed=1).labels, sub.labels)
    with pytest.raises(CnnlabError, match="train_limit must be between 1 and 60,000"):
        balanced_subset(ds, 10 ** 6, seed=1)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("src")
    train(TrainConfig(model="lenet5_modern", epochs=1, batch_size=256, lr=0.05, quiet=True, seed=0,
                      train_limit=6000, out=str(out)))
    return out


@pytest.mark.slow
def test_transfer_feature_extraction_run_changes_only_the_head(source_run, tmp_path, capsys):
    out = tmp_path / "feat"
    code = main(["transfer", "--from", str(source_run), "--data", "mnist", "--train-limit", "500", "--epochs", "1",
                 "--batch-size", "50", "--quiet", "--out", str(out)])
    assert code == 0
    src, dst = load_checkpoint(source_run)["model"], load_checkpoint(out)["model"]
    changed = {k for k in dst if not torch.equal(src[k], dst[k])}
    assert changed and changed <= head_keys("lenet5_modern")  # the backbone, BN statistics included, is untouched
    cfg = load_checkpoint(out)["info"].config
    assert cfg["transfer"] == "features" and cfg["pretrained"] == str(source_run)


@pytest.mark.slow
def test_embed_writes_penultimate_features_with_labels(source_run, tmp_path):
    out = tmp_path / "emb.npz"
    assert main(["embed", str(source_run), "--out", str(out)]) == 0
    z = np.load(out)
    assert z["features"].shape == (10_000, 84) and z["labels"].shape == (10_000,)
    assert np.bincount(z["labels"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # the features are the head's input: applying the head to them gives the model's logits
    from cnnlab.runs import open_run

    run = open_run(source_run)
    model = run.model
    head = model.get_submodule(heads(model, "lenet5_modern")[-1])
    ds = load("mnist", "test")
    from cnnlab.data.memory import Augment, MemoryLoader

    x, _ = next(iter(MemoryLoader(ds, 8, False, Augment(**run.info.recipe["augment"]))))
    with torch.no_grad():
        torch.testing.assert_close(head(torch.from_numpy(z["features"][:8])), model(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(embed(model, "lenet5_modern", x), z["features"][:8], rtol=1e-5, atol=1e-5)


def test_transfer_mistakes_exit_2(capsys, tmp_path):
    assert main(["transfer", "--from", str(tmp_path / "nope"), "--data", "mnist"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["transfer", "--from", "IMAGENET1K_V1", "--model", "lenet5", "--data", "mnist"]) == 2
    assert "no torchvision weights" in capsys.readouterr().err
