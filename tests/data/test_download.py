"""download_file checksums (file:// URLs) and safe_extract on archives built to attack it."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile

import pytest

from largebatch.data import DataError
from largebatch.data import download as dl


def _tar_with(path, members):
    """members: list of (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"payload"


def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    "bad, member",
    [
        (_file("../evil.txt"), "../evil.txt"),
        (_file("ok/../../evil.txt"), "ok/../../evil.txt"),
        (_file("/tmp/evil.txt"), "/tmp/evil.txt"),
        (_link("link", "../../outside"), "link"),
        (_link("sub/link", "/etc/passwd"), "sub/link"),
        (_link("hard", "../outside", hard=True), "hard"),
    ],
)
def test_tar_refuses_escaping_members(tmp_path, bad, member):
    archive = _tar_with(tmp_path / "a.tar.gz", [_file("fine/a.txt"), bad])
    target = tmp_path / "out"
    with pytest.raises(DataError, match="refusing member") as err:
        dl.safe_extract(archive, target)
    assert member in str(err.value)
    # Everything is checked before anything is written.
    assert not (target / "fine").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_tar_extracts_safe_archive_with_internal_symlink(tmp_path):
    archive = _tar_with(
        tmp_path / "a.tgz", [_file("d/a.txt"), _link("d/alias", "a.txt"), _file("d/e/b.txt")]
    )
    out = dl.safe_extract(archive, tmp_path / "out")
    assert (out / "d" / "a.txt").read_bytes() == b"payload"
    assert os.path.islink(out / "d" / "alias")
    assert (out / "d" / "e" / "b.txt").is_file()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_zip_refuses_escaping_members(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr(name, "gotcha")
    with pytest.raises(DataError, match="refusing member") as err:
        dl.safe_extract(archive, tmp_path / "out")
    assert name in str(err.value)
    assert not (tmp_path / "out" / "fine.txt").exists()


def test_zip_refuses_symlink_and_extracts_plain(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "../../outside")
    with pytest.raises(DataError, match="symlink"):
        dl.safe_extract(archive, tmp_path / "out")
    good = tmp_path / "b.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("x/y.txt", "hello")
    assert (dl.safe_extract(good, tmp_path / "out2") / "x" / "y.txt").read_text() == "hello"


def test_corrupt_archive_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball at all")
    with pytest.raises(DataError, match="corrupt archive"):
        dl.safe_extract(bad, tmp_path / "out")


def test_download_file_verifies_checksum(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"some bytes" * 100)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = dl.download_file(src.as_uri(), tmp_path / "d" / "got.bin", sha256=sha, md5=md5)
    assert dest.read_bytes() == src.read_bytes()

    bad = tmp_path / "d" / "bad.bin"
    with pytest.raises(DataError, match=f"expected {'0' * 64}, got {sha}"):
        dl.download_file(src.as_uri(), bad, sha256="0" * 64)
    assert not bad.exists()
    assert os.listdir(tmp_path / "d") == ["got.bin"]  # no temporary file left behind


def test_download_file_unreachable(tmp_path):
    with pytest.raises(DataError, match="cannot download"):
        dl.download_file((tmp_path / "missing").as_uri(), tmp_path / "x")


def test_download_table_is_complete():
    assert set(dl.DOWNLOADS) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "caltech101"}
    for resources in dl.DOWNLOADS.values():
        for res in resources:
            assert res.md5 is not None and len(res.md5) == 32
            assert all(u.startswith(("https://", "http://")) for u in res.urls)
    assert dl.DOWNLOADS["mnist"][0].urls[0].startswith("https://ossci-datasets.s3.amazonaws.com")


def test_download_dataset_fetches_and_extracts(tmp_path, monkeypatch):
    # A CIFAR-10-like archive served from a file:// URL with its real checksum.
    src = tmp_path / "served" / "cifar-10-binary.tar.gz"
    src.parent.mkdir()
    from tests.data.test_cifar import write_cifar10

    write_cifar10(src, per_file=2)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    res = dl.Resource(("file:///nonexistent/mirror", src.as_uri()), src.name, md5=md5, extract=True)
    monkeypatch.setitem(dl.DOWNLOADS, "cifar10", (res,))
    folder = dl.download_dataset("cifar10", tmp_path / "root")
    assert folder == tmp_path / "root" / "cifar10"
    assert (folder / "cifar-10-batches-bin" / "test_batch.bin").is_file()
    with pytest.raises(DataError, match="nothing to download"):
        dl.download_dataset("nope", tmp_path)
