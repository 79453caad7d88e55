"""safe_extract follows the archive's own symlinks when it checks members, and download_dataset
moves an extraction in only when all of it succeeded (issue 13)."""

from __future__ import annotations

import hashlib
import os

import pytest

from largebatch.data import DataError
from largebatch.data import download as dl
from tests.data.test_download import _file, _link, _tar_with


@pytest.mark.parametrize(
    "members, refused",
    [
        # d/l -> . is d itself; d/l/../../x is then d/../x = x's parent's sibling: outside.
        ([_link("d/l", "."), _file("d/l/../../x")], "d/l/../../x"),
        # a link to a folder, then a file written through it that climbs out
        ([_link("a/up", ".."), _file("a/up/../evil")], "a/up/../evil"),
        # a chain of links, each harmless alone
        ([_link("p/q", "."), _link("p/r", "q/.."), _file("p/r/../evil")], "p/r/../evil"),
        # a link whose target goes through an earlier link
        ([_link("s/t", "."), _link("s/u", "t/../../..")], "s/u"),
        # a hard link through a symlinked folder
        ([_link("h/l", "."), _link("h/hard", "h/l/../../x", hard=True)], "h/hard"),
    ],
)
def test_members_through_archive_symlinks_are_refused_before_writing(tmp_path, members, refused):
    archive = _tar_with(tmp_path / "a.tar.gz", [_file("fine/a.txt"), *members])
    target = tmp_path / "inner" / "out"
    with pytest.raises(DataError, match="refusing member") as err:
        dl.safe_extract(archive, target)
    assert refused in str(err.value)
    assert "corrupt" not in str(err.value)
    assert not target.exists() or not any(target.iterdir())  # nothing written, no link kept
    assert not (tmp_path / "inner" / "x").exists() and not (tmp_path / "inner" / "evil").exists()


def test_links_that_stay_inside_still_extract(tmp_path):
    archive = _tar_with(
        tmp_path / "a.tar.gz",
        [_file("d/e/f.txt"), _link("d/l", "e"), _link("d/m", "l/f.txt"), _file("d/l/g.txt")],
    )
    out = dl.safe_extract(archive, tmp_path / "out")
    assert (out / "d" / "e" / "g.txt").is_file()
    assert (out / "d" / "m").read_bytes() == b"payload"


def test_existing_symlink_in_the_target_is_not_followed_out(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    os.symlink(tmp_path, target / "escape")
    archive = _tar_with(tmp_path / "a.tar.gz", [_file("escape/evil")])
    with pytest.raises(DataError, match="refusing member"):
        dl.safe_extract(archive, target)
    assert not (tmp_path / "evil").exists()


def _serve(monkeypatch, tmp_path, members) -> None:
    src = _tar_with(tmp_path / "served" / "data.tar.gz", members)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    res = dl.Resource((src.as_uri(),), src.name, md5=md5, extract=True)
    monkeypatch.setitem(dl.DOWNLOADS, "cifar10", (res,))


def test_download_moves_in_only_a_complete_extraction(tmp_path, monkeypatch):
    (tmp_path / "served").mkdir()
    _serve(monkeypatch, tmp_path, [_file("good/a.txt"), _link("d/l", "."), _file("d/l/../../x")])
    root = tmp_path / "root"
    with pytest.raises(DataError, match="refusing member"):
        dl.download_dataset("cifar10", root)
    folder = root / "cifar10"
    # Only the verified archive is there: no partial tree, no temporary folder.
    assert sorted(p.name for p in folder.iterdir()) == ["data.tar.gz"]

    _serve(monkeypatch, tmp_path, [_file("good/a.txt"), _file("good/b/c.txt")])
    assert dl.download_dataset("cifar10", root) == folder
    assert (folder / "good" / "b" / "c.txt").read_bytes() == b"payload"
    assert sorted(p.name for p in folder.iterdir()) == ["data.tar.gz", "good"]


def test_failed_extraction_leaves_an_earlier_tree_untouched(tmp_path, monkeypatch):
    (tmp_path / "served").mkdir()
    root = tmp_path / "root"
    _serve(monkeypatch, tmp_path, [_file("good/a.txt")])
    folder = dl.download_dataset("cifar10", root)
    _serve(monkeypatch, tmp_path, [_file("good/new.txt"), _file("../evil")])
    with pytest.raises(DataError):
        dl.download_dataset("cifar10", root)
    assert sorted(p.name for p in (folder / "good").iterdir()) == ["a.txt"]
