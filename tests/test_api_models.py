"""cnnlab.create_model as timm and torchvision users write it: pretrained weights (a tag, an enum, True, a path),
``num_classes=0`` for pooled features, a config carried on every model, and one naming rule with the old names
kept as aliases. Checked against torchvision itself: its builders, its weights' state_dicts (served here from
memory instead of the network), its outputs."""

import warnings

import pytest
import torch
import torchvision

import cnnlab
from cnnlab.errors import CnnlabError, CnnlabNote
from cnnlab.models import create_model as build
from cnnlab.models.registry import ALIASES, list_models, model_card
from cnnlab.transfer import embed, heads, load_pretrained


@pytest.fixture
def torchvision_hub(monkeypatch):
    """torchvision's official weights, as the network would serve them: the state_dict of the architecture
    (seeded), for whichever URL is asked; records the URLs. torchvision's own builders get the same."""
    served, cache = [], {}

    def load(url, *args, **kwargs):
        served.append(url)
        if url not in cache:
            torch.manual_seed(len(cache))
            builder = {"googlenet": lambda: torchvision.models.googlenet(weights=None, init_weights=True),
                       "inception": lambda: torchvision.models.inception_v3(weights=None, init_weights=True),
                       "resnet18": lambda: torchvision.models.resnet18(weights=None)}
            arch = next(k for k in builder if k in url.rsplit("/", 1)[-1])
            cache[url] = builder[arch]().state_dict()
        return {k: v.clone() for k, v in cache[url].items()}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", load)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", load)
    return served


def test_pretrained_true_is_torchvision_default_weights_with_transform_input(torchvision_hub):
    # the friction point: torchvision's GoogLeNet weights expect transform_input, which Python users did not get
    ours = cnnlab.create_model("googlenet", pretrained=True).eval()
    theirs = torchvision.models.googlenet(weights="DEFAULT").eval()
    assert ours.transform_input and theirs.transform_input
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
    cfg = ours.cnnlab_config
    assert cfg.name == "googlenet" and cfg.options == {"transform_input": True}
    assert cfg.weights == "torchvision GoogLeNet_Weights.IMAGENET1K_V1" and cfg.num_classes == 1000
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    # timm's pretrained_cfg, as a dict
    assert ours.pretrained_cfg["architecture"] == "googlenet" and ours.pretrained_cfg["input_size"] == (3, 224, 224)


def test_weights_enum_tag_and_torchvision_spelling(torchvision_hub):
    from torchvision.models import Inception_V3_Weights, ResNet18_Weights

    a = cnnlab.create_model("resnet18", weights=ResNet18_Weights.IMAGENET1K_V1).eval()
    b = cnnlab.create_model("resnet18", pretrained="IMAGENET1K_V1").eval()
    c = torchvision.models.resnet18(weights=ResNet18_Weights.IMAGENET1K_V1).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), c(x))
        torch.testing.assert_close(b(x), c(x))
    with pytest.raises(CnnlabError, match="Inception_V3_Weights.IMAGENET1K_V1 are not weights for resnet18"):
        cnnlab.create_model("resnet18", weights=Inception_V3_Weights.IMAGENET1K_V1)
    with pytest.raises(CnnlabError, match="has no torchvision weights 'IMAGENET9K'; choose from IMAGENET1K_V1"):
        cnnlab.create_model("resnet18", pretrained="IMAGENET9K")
    with pytest.raises(CnnlabError, match="pretrained or weights, not both"):
        cnnlab.create_model("resnet18", pretrained=True, weights="DEFAULT")


def test_inception_v3_weights_set_transform_input_in_load_pretrained_too(torchvision_hub):
    model = cnnlab.create_model("inception_v3", aux_logits=False)
    assert not model.transform_input
    load_pretrained(model, "IMAGENET1K_V1")  # the model knows its name: no need to repeat it
    assert model.transform_input and model.cnnlab_config.options["transform_input"]
    theirs = torchvision.models.inception_v3(weights="IMAGENET1K_V1", aux_logits=True).eval()
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        a, b = model.eval()(x), theirs(x)
    # random weights through 94 layers give logits of 1e9: the same up to float rounding in a different order
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())


def test_new_class_count_keeps_the_backbone_and_gives_a_fresh_head(torchvision_hub):
    theirs = torchvision.models.resnet18(weights="DEFAULT")
    ours = cnnlab.create_model("resnet18", pretrained=True, num_classes=5)
    assert ours.fc.out_features == 5 and ours.cnnlab_config.num_classes == 5
    torch.testing.assert_close(ours.layer4[1].conv2.weight, theirs.layer4[1].conv2.weight)
    assert ours.fc.weight.shape != theirs.fc.weight.shape


def test_num_classes_0_gives_torchvisions_pooled_features(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    ours = cnnlab.create_model("resnet18", pretrained=path, num_classes=0).eval()
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x))
    assert ours.num_features == 512 and ours.num_classes == 0 and ours.cnnlab_config.weights == str(path)
    # a state_dict file says its class count through its head: 1000, kept when num_classes is not given
    assert cnnlab.create_model("resnet18", pretrained=str(path)).fc.out_features == 1000


@pytest.mark.parametrize("name", ["lenet5", "lenet5_modern", "nin_cifar", "resnet20", "densenet40", "fractalnet20",
                                  "googlenet", "alexnet_paper", "vgg_cifar"])
def test_headless_model_returns_what_the_classifier_reads(name):
    """num_classes=0 returns exactly the input of the classifier (LeNet-5's F6 before its RBF units, NiN's last
    mlpconv pooled, GoogLeNet without its auxiliary heads), for the same weights."""
    size = model_card(name).input_size
    torch.manual_seed(0)
    headless = build(name, num_classes=0).eval()
    full = build(name, aux_logits=False) if name == "googlenet" else build(name)
    full.load_state_dict(headless.state_dict(), strict=False)
    full.eval()
    x = torch.randn(2, *size)
    with torch.no_grad():
        out = headless(x)
        seen = []
        head = full.get_submodule(heads(full)[-1])
        hook = head.register_forward_pre_hook(lambda m, a: seen.append(a[0].flatten(1)))
        full(x)
        hook.remove()
    assert out.shape == (2, headless.num_features)
    if name.startswith("nin"):  # the head is NiN's last 1x1 conv: features are its input, globally pooled
        torch.testing.assert_close(out, seen[0].view(2, headless.num_features, -1).mean(-1).relu())
    else:
        torch.testing.assert_close(out, seen[0])
    assert not any("aux" in n for n, _ in headless.named_modules())


def test_every_model_has_a_headless_form():
    from cnnlab.models.registry import _feature_width

    widths = {name: _feature_width(name, (), model_card(name).input_size[0]) for name in list_models()}
    assert widths["resnet50"] == 2048 and widths["vgg16"] == 4096 and widths["lenet5"] == 84
    assert widths["densenet121"] == 1024 and widths["inception_v3"] == 2048 and widths["googlenet_paper"] == 1024
    assert all(w > 1 for w in widths.values())


def test_aux_logits_with_num_classes_0_is_refused():
    with pytest.raises(CnnlabError, match="has no auxiliary classifiers either"):
        build("googlenet", num_classes=0, aux_logits=True)


def test_the_model_config_is_read_instead_of_the_name(tmp_path):
    from cnnlab.fileio import atomic_save

    model = build("resnet20", drop_path_rate=0.1)
    cfg = model.cnnlab_config
    assert (cfg.name, cfg.num_classes, cfg.in_chans, cfg.input_size) == ("resnet20", 10, 3, (3, 32, 32))
    assert cfg.options == {"drop_path_rate": 0.1} and cfg.weights is None and cfg.mean is None
    assert heads(model) == ["fc"]
    # summary: the model's own name and input size
    s = cnnlab.summary(model)
    assert s.total_params == cnnlab.summary("resnet20").total_params
    # load_pretrained(model, source) with a state_dict file; embed(model, images)
    path = tmp_path / "w.pt"
    atomic_save(model.state_dict(), path)
    other = build("resnet20", drop_path_rate=0.1)
    report = load_pretrained(other, str(path))
    assert len(report.loaded) == len(model.state_dict()) and other.cnnlab_config.weights == str(path)
    x = torch.randn(3, 3, 32, 32)
    assert embed(other, x).shape == (3, 64)
    # a module cnnlab did not build has no config: name it
    with pytest.raises(CnnlabError, match="not built by cnnlab.create_model"):
        load_pretrained(torchvision.models.resnet18(), str(path))


def test_architecture_builder_refuses_weights():
    with pytest.raises(CnnlabError, match=r"load weights with cnnlab.create_model\(name, pretrained=...\)"):
        build("resnet18", pretrained=True)
    assert build("resnet18", pretrained=False).fc.out_features == 1000


def test_no_default_weights_is_one_sentence():
    with pytest.raises(CnnlabError, match="lenet5 has no default weights"):
        cnnlab.create_model("lenet5", pretrained=True)
    with pytest.raises(CnnlabError, match="no weights at 'nowhere.pt'"):
        cnnlab.create_model("lenet5", pretrained="nowhere.pt")


# -- one naming rule --------------------------------------------------------------------------------------------
def test_plain_names_are_torchvisions_builds_and_paper_builds_say_so():
    """The rule: where torchvision has an architecture, the plain name is torchvision's (its state_dict keys, key
    for key); where torchvision departs from the paper, NAME_paper is the paper's."""
    tv = {"alexnet": torchvision.models.alexnet, "googlenet": torchvision.models.googlenet,
          "resnet50": torchvision.models.resnet50}
    for name, builder in tv.items():
        kw = {"aux_logits": True, "init_weights": False} if name == "googlenet" else {}
        with torch.device("meta"):
            theirs, ours = builder(weights=None, **kw).state_dict(), build(name).state_dict()
        assert list(ours) == list(theirs)
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
        assert f"{name}_paper" in list_models()
    assert not set(ALIASES) & set(list_models())  # old names are not listed twice


@pytest.mark.parametrize("old,new", sorted(ALIASES.items()))
def test_old_names_still_build_with_a_note(old, new, monkeypatch):
    from cnnlab.models import registry

    monkeypatch.setattr(registry, "_noted", set())
    with pytest.warns(CnnlabNote, match=f"model '{old}' is now called '{new}'"):
        card = model_card(old)
    assert card.name == new
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the note comes once
        with torch.device("meta"):
            assert build(old).cnnlab_config.name == new


def test_old_googlenet_checkpoints_open_as_the_papers_build(tmp_path):
    """Checkpoints written before the rule (format 2) meant the paper's GoogLeNet by "googlenet"."""
    from cnnlab.fileio import atomic_save
    from cnnlab.runs import FORMAT, RunInfo, load_checkpoint, open_run

    torch.manual_seed(0)
    paper = build("googlenet_paper", num_classes=3)
    info = RunInfo("googlenet", ("a", "b", "c"), 3, (3, 224, 224), "folder:x", recipe={})
    old = tmp_path / "old.pt"
    atomic_save({"format": "cnnlab-checkpoint-2", "info": info.as_dict(), "model": paper.state_dict()}, old)
    assert load_checkpoint(old)["info"].model == "googlenet_paper"
    run = open_run(old)
    assert type(run.model).__name__ == "GoogLeNet" and run.model.cnnlab_config.name == "googlenet_paper"
    assert run.model.cnnlab_config.weights == str(old)
    # today's format means today's name
    new = tmp_path / "new.pt"
    atomic_save({"format": FORMAT, "info": info.as_dict(), "model": build("googlenet", num_classes=3).state_dict()},
                new)
    assert load_checkpoint(new)["info"].model == "googlenet"
    # an old alias in any format gives today's name
    alias = RunInfo("resnet50_v1", ("a", "b"), 3, (3, 224, 224), "folder:x", recipe={})
    atomic_save({"format": FORMAT, "info": alias.as_dict(), "model": {}}, new)
    assert load_checkpoint(new)["info"].model == "resnet50_paper"


def test_cli_takes_an_old_name_with_a_note(capsys):
    from cnnlab.cli import main

    from cnnlab.models import registry

    registry._noted.discard("resnet50_v1")
    assert main(["card", "resnet50_v1"]) in (0, None)
    out, err = capsys.readouterr()
    assert out.startswith("resnet50_paper: ResNet-50 as published")
    assert "'resnet50_v1' is now called 'resnet50_paper'" in err and "Traceback" not in err


def test_a_run_on_a_dataset_this_cnnlab_does_not_know_still_opens(tmp_path):
    from cnnlab.fileio import atomic_save
    from cnnlab.runs import FORMAT, RunInfo, open_run

    info = RunInfo("lenet5", tuple("0123456789"), 1, (1, 32, 32), "emnist_someday", recipe={})
    atomic_save({"format": FORMAT, "info": info.as_dict(), "model": build("lenet5").state_dict()}, tmp_path / "r.pt")
    cfg = open_run(tmp_path / "r.pt").model.cnnlab_config
    assert cfg.weights == str(tmp_path / "r.pt") and cfg.mean is None and cfg.std is None
