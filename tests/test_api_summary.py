"""The summary where notebook users already are: an HTML table in Jupyter, a pandas DataFrame, and the totals of
torchinfo (installed with `pip install -e .[peers]`; without it that test skips)."""

import html
import re
import sys

import pytest
import torch
from torch import nn

from cnnlab import CnnlabError, summary


def test_html_is_the_cli_table_with_its_text_escaped():
    s = summary("lenet5")
    page = s._repr_html_()
    assert page == s.html()
    cells = [re.findall(r"<td(?: [^>]*)?>(.*?)</td>", row) for row in re.findall(r"<tr>(<td.*?)</tr>", page)]
    assert [[html.unescape(c) for c in row] for row in cells] == s._cells(None)
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", page) == list(s._COLUMNS)
    assert [html.unescape(x) for x in re.findall(r"<li>(.*?)</li>", page)] == s.totals_lines()

    class Tricky(nn.Module):  # a module name a browser would read as markup
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x)

    Tricky.__name__ = "Tricky<b>&"
    page = summary(Tricky(), (1, 8, 8)).html()
    assert "Tricky&lt;b&gt;&amp;" in page and "<b>" not in page


def test_dataframe_rows_are_the_csv_rows_and_add_up_to_the_totals():
    pd = pytest.importorskip("pandas")
    s = summary("resnet20")
    df = s.to_dataframe()
    assert isinstance(df, pd.DataFrame) and list(df.columns) == list(s._FIELDS)
    assert df.to_csv(index=False, lineterminator="\n") == s.csv()
    assert df["params"].sum() == s.total_params and df["macs"].sum() == s.total_macs  # the totals check themselves
    assert df["macs"].dtype.kind == "i" and len(summary("resnet20", depth=1).to_dataframe()) < len(df)


def test_dataframe_without_pandas_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed: the import fails
    with pytest.raises(CnnlabError, match=r"^to_dataframe\(\) needs pandas, which is not installed: pip install "
                                          r"pandas$"):
        summary("lenet5").to_dataframe()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "alexnet"])
def test_totals_agree_with_torchinfo(name):
    """Parameters agree exactly. torchinfo's "mult-adds" also count every parameter outside a convolution's
    weight as one (a linear layer's bias once per output, batch norm's scale and shift once per channel, not per
    pixel) and a convolution's bias once per output element; cnnlab counts the products of convolutions and
    matrix products (PyTorch's flop counter, the papers' convention). With those added, the two agree exactly."""
    torchinfo = pytest.importorskip("torchinfo")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    theirs = torchinfo.summary(model, input_size=(1, 3, 224, 224), verbose=0)
    ours = summary(model, (1, 3, 224, 224))
    assert ours.total_params == theirs.total_params == sum(p.numel() for p in model.parameters())
    assert ours.trainable_params == theirs.trainable_params
    extra = 0
    for layer, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            _, height, width = ours.row(layer).output_shape
            extra += m.bias.numel() * height * width
        elif isinstance(m, nn.Linear) and m.bias is not None:
            extra += m.bias.numel()
        elif isinstance(m, nn.BatchNorm2d):
            extra += m.weight.numel() + m.bias.numel()
    assert extra > 0 and ours.total_macs + extra == theirs.total_mult_adds
