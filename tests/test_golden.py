"""The golden-file fixture itself: only `pytest --update-golden` writes golden files; a missing one fails."""

import pytest

import conftest


def _golden(request, monkeypatch, folder, update: bool):
    monkeypatch.setattr(conftest, "GOLDEN", folder)
    monkeypatch.setattr(request.config.option, "update_golden", update)
    return request.getfixturevalue("golden")


def test_a_missing_golden_file_fails_and_is_not_written(request, monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)  # the answer must not depend on where the suite runs
    golden = _golden(request, monkeypatch, tmp_path, update=False)
    with pytest.raises(AssertionError, match=r"missing; run pytest --update-golden"):
        golden("new_table.txt", "some output\n")
    assert not (tmp_path / "new_table.txt").exists()
    (tmp_path / "new_table.txt").write_text("some output\n")
    golden("new_table.txt", "some output\n")
    with pytest.raises(AssertionError, match="output differs"):
        golden("new_table.txt", "other output\n")


def test_update_golden_writes_the_file(request, monkeypatch, tmp_path):
    golden = _golden(request, monkeypatch, tmp_path, update=True)
    golden("table.txt", "v1\n")
    golden("table.txt", "v2\n")
    assert (tmp_path / "table.txt").read_text() == "v2\n"
