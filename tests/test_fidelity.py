from cnnlab.analysis.fidelity import fidelity, render


def test_vgg_table_2_and_torchvision_figures_agree():
    rows = fidelity(["vgg11", "vgg16_c", "vgg16", "vgg19"])
    computed = [r for r in rows if r.ours is not None]
    assert computed and all(r.agrees for r in computed)
    assert {r.figure.metric for r in computed} == {"params", "macs"}


def test_alexnet_round_figures_are_reported_as_differing():
    rows = {(r.figure.metric, tuple(r.figure.options.items())): r for r in fidelity("alexnet_paper")}
    params = rows[("params", ())]
    assert params.ours == 60_965_224 and not params.agrees and abs(params.relative - 0.0161) < 1e-3
    assert rows[("params", (("towers", 1),))].agrees
    neurons = rows[("neurons", ())]
    assert neurons.ours == 290_400 + 186_624 + 2 * 64_896 + 43_264 + 4096 * 2 + 1000


def test_accuracies_are_listed_but_not_computed():
    rows = [r for r in fidelity("lenet5") if r.figure.metric == "test_err"]
    assert rows and rows[0].ours is None and rows[0].verdict == "needs trained weights"


def test_render_formats():
    rows = fidelity("lenet5")
    table = render(rows)
    assert "60,000" in table and "1 of 1 computable figures agree" in table
    assert render(rows, "md").startswith("| Model | Figure |")
    assert '"paper": 60000' in render(rows, "json")
