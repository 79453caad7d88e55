"""Fetching the datasets: official URLs, checksum verification and safe archive extraction.

``download_file`` streams a URL to a temporary file beside its destination, verifies the
checksum and renames it into place, so an interrupted or corrupted download never leaves a file
that looks complete. ``safe_extract`` unpacks .zip, .tar, .tar.gz/.tgz archives and refuses any
member whose path would land outside the target (absolute paths, ``..``, links pointing out).
``download_dataset`` does both for a dataset named in :data:`DOWNLOADS`.

The checksums are the ones the dataset authors publish (CIFAR, Caltech) or the ones torchvision
pins for the same files (MNIST, Fashion-MNIST); they are MD5s because that is what is published.

Example::

    folder = download_dataset("cifar10", "~/.cache/largebatch")  # -> ~/.cache/largebatch/cifar10
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from largebatch.data.registry import DataError

DEFAULT_ROOT = Path.home() / ".cache" / "largebatch"
"""Where ``download_dataset`` puts datasets when no root is given (the loaders look there)."""


@dataclass(frozen=True)
class Resource:
    """One file to fetch: mirrors tried in order, its name on disk, and its checksum."""

    urls: tuple[str, ...]
    filename: str
    md5: str | None = None
    sha256: str | None = None
    extract: bool = False
    """Unpack the archive into the dataset folder after verifying it."""


_MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)


def _idx(mirrors: tuple[str, ...], checksums: dict[str, str]) -> tuple[Resource, ...]:
    return tuple(
        Resource(tuple(m + name for m in mirrors), name, md5=md5) for name, md5 in checksums.items()
    )


DOWNLOADS: dict[str, tuple[Resource, ...]] = {
    # The IDX loader reads the .gz files as they are; nothing to extract.
    "mnist": _idx(
        (_MNIST_MIRROR,),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": _idx(
        _FASHION_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": (
        Resource(
            ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
            "cifar-10-binary.tar.gz",
            md5="c32a1d4ab5d03f1284b67883e8d87530",
            extract=True,
        ),
    ),
    "cifar100": (
        Resource(
            ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",),
            "cifar-100-binary.tar.gz",
            md5="03b5dce01913d631647c71ecec9e9cb8",
            extract=True,
        ),
    ),
    # CaltechDATA record 20086; the zip holds caltech-101/101_ObjectCategories.tar.gz
    # (MD5 b224c7392d521a49829488ab0f1120d9), which download_dataset unpacks in turn.
    "caltech101": (
        Resource(
            ("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip?download=1",),
            "caltech-101.zip",
            md5="3138e1922a9193bfa496528edbbc45d0",
            extract=True,
        ),
    ),
}


def file_digest(path: str | Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | Path, sha256: str | None = None, md5: str | None = None) -> None:
    """Raise :class:`DataError` naming expected and actual digests when ``path`` does not match."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        got = file_digest(path, algorithm)
        if got.lower() != expected.lower():
            raise DataError(
                f"{path}: {algorithm} checksum mismatch: expected {expected.lower()}, got {got}; "
                "the download is corrupt or the file changed upstream"
            )


def download_file(
    url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None
) -> Path:
    """Fetch ``url`` to ``dest`` through a temporary file, verify it, then rename it into place.

    A checksum mismatch deletes the temporary file and raises :class:`DataError`; ``dest`` is
    never left half-written. ``file://`` URLs work (urllib), which is how the tests run offline.
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
                    shutil.copyfileobj(response, out, length=1 << 20)
            except OSError as e:  # URLError is an OSError
                raise DataError(f"cannot download {url}: {e}") from None
        verify_checksum(tmp, sha256=sha256, md5=md5)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def check_member_path(name: str, archive: Path) -> str:
    """The member's path normalised, or DataError when it is absolute or climbs out with ``..``."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise DataError(f"{archive}: refusing member '{name}': absolute path")
    normal = posixpath.normpath(unified)
    if normal == ".." or normal.startswith("../"):
        raise DataError(f"{archive}: refusing member '{name}': its path escapes the target")
    return normal


_MAX_LINKS = 40  # as the OS: more links than this on one path is a loop


class _Members:
    """The tree an archive builds, as far as links go: where each path lands once the archive's
    own symlinks (those extracted before it) are followed, like the OS will follow them.

    Paths are lists of components relative to the target; a path that climbs above the target
    is refused. The check needs no disk: nothing is written before every member passed.
    """

    def __init__(self, archive: Path, target: Path) -> None:
        self.archive = archive
        self.target = target
        self.links: dict[str, str] = {}
        """Resolved location of each symlink member -> its link text."""

    def _refuse(self, name: str, why: str) -> DataError:
        return DataError(f"{self.archive}: refusing member '{name}': {why}")

    def resolve(self, name: str, path: str, follow_last: bool, base: list[str]) -> list[str]:
        """``path`` (relative to the folder ``base``) with every archive symlink on the way
        followed (the last component too if ``follow_last``)."""
        parts = list(base)
        todo = path.split("/")
        hops = 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    how = " through a link" if hops else ""
                    raise self._refuse(name, f"its path escapes the target{how}")
                parts.pop()
                continue
            parts.append(part)
            key = "/".join(parts)
            if key in self.links and (todo or follow_last):
                hops += 1
                if hops > _MAX_LINKS:
                    raise self._refuse(name, "too many levels of symbolic links")
                link = self.links[key]
                if link.startswith("/"):
                    raise self._refuse(name, f"goes through a link to absolute '{link}'")
                parts.pop()  # a link resolves against its own folder
                todo = link.split("/") + todo
        return parts

    def _inside_on_disk(self, name: str, parts: list[str]) -> None:
        """Links already in the target (an earlier extraction) are followed by the OS too."""
        root = os.path.realpath(self.target)
        real = os.path.realpath(os.path.join(root, *parts))
        if real != root and not real.startswith(root + os.sep):
            raise self._refuse(name, f"it would land at {real}, outside the target")

    def add(self, member: tarfile.TarInfo) -> None:
        """Check one member (in archive order) and record it if it is a symlink.

        The member's raw path is walked, not its normalised form: ``d/l/..`` is the parent of
        where ``d/l`` points, not ``d``."""
        name = member.name
        path = name.replace("\\", "/")
        link = member.linkname.replace("\\", "/")
        if member.issym():
            if link.startswith("/"):
                raise self._refuse(name, f"link to absolute '{link}'")
            where = self.resolve(name, path, follow_last=False, base=[])
            if not where:
                raise self._refuse(name, "a link in place of the target itself")
            self.resolve(name, link, follow_last=True, base=where[:-1])  # must stay inside
            self._inside_on_disk(name, where[:-1])
            self.links["/".join(where)] = link
            return
        if member.islnk():  # a hard link names a path in the archive, from the root
            if link.startswith("/"):
                raise self._refuse(name, f"link to absolute '{link}'")
            self._inside_on_disk(name, self.resolve(name, link, follow_last=True, base=[]))
        elif not (member.isfile() or member.isdir()):
            raise self._refuse(name, "not a file or folder")
        # Writing a file (or making a folder) follows a link already at its path.
        self._inside_on_disk(name, self.resolve(name, path, follow_last=True, base=[]))


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Unpack a .zip, .tar, .tar.gz or .tgz into ``target``, refusing members that escape it.

    Every member is checked before anything is written, so a malicious archive leaves nothing
    behind. The check follows the archive's own symlinks as the OS will once they are written
    (``d/l -> .`` then ``d/l/../../x`` lands outside, and is refused) and links already in
    ``target``. Device files and FIFOs are refused too; zip archives may hold no symlinks.
    """
    archive, target = Path(archive), Path(target)
    name = archive.name.lower()
    if not name.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        raise DataError(f"{archive}: unknown archive type (expected .zip, .tar, .tar.gz, .tgz)")
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    check_member_path(info.filename, archive)
                    # Zip symlinks carry S_IFLNK in the upper bits of external_attr.
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise DataError(f"{archive}: refusing member '{info.filename}': symlink")
                target.mkdir(parents=True, exist_ok=True)
                zf.extractall(target)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                tree = _Members(archive, target)
                for member in members:
                    check_member_path(member.name, archive)
                    tree.add(member)
                target.mkdir(parents=True, exist_ok=True)
                # The checks above are ours; the 'data' filter (where Python has it) is a second
                # line of defence with the same intent.
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(target, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.10.12
                    tf.extractall(target, members=members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DataError(f"{archive}: corrupt archive ({e}); delete it and fetch it again") from None
    return target


def _move_in(staging: Path, folder: Path) -> None:
    """Move every entry of ``staging`` into ``folder``, replacing an entry of the same name (an
    earlier extraction of the same files)."""
    for entry in sorted(staging.iterdir()):
        dest = folder / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(entry, dest)


def download_dataset(name: str, root: str | Path | None = None) -> Path:
    """Fetch ``name``'s files into ``root/name``, verify and unpack them; return that folder.

    Files already present with the right checksum are not fetched again. For Caltech101 the inner
    ``101_ObjectCategories.tar.gz`` is unpacked too, so the folder ends up holding
    ``101_ObjectCategories/``. Archives are unpacked into a temporary folder beside the target and
    moved in only when every one of them unpacked: a refused or corrupt archive leaves the folder
    as it was (with the downloaded archive, and nothing half-extracted).
    """
    if name not in DOWNLOADS:
        raise DataError(f"nothing to download for '{name}'; downloadable: {', '.join(DOWNLOADS)}")
    folder = Path(root).expanduser() if root is not None else DEFAULT_ROOT
    folder = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        _fetch_all(name, folder, staging)
        _move_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _fetch_all(name: str, folder: Path, staging: Path) -> None:
    """Fetch ``name``'s files into ``folder``; unpack its archives into ``staging``."""
    for res in DOWNLOADS[name]:
        dest = folder / res.filename
        if not _is_valid(dest, res):
            errors = []
            for url in res.urls:
                try:
                    download_file(url, dest, sha256=res.sha256, md5=res.md5)
                    break
                except DataError as e:
                    errors.append(str(e))
            else:
                raise DataError(f"{name}: every mirror failed for {res.filename}: {errors}")
        if res.extract:
            safe_extract(dest, staging)
    if name == "caltech101":
        for inner in staging.rglob("101_ObjectCategories.tar.gz"):
            if "__MACOSX" not in inner.parts:
                safe_extract(inner, staging)
                break


def _is_valid(path: Path, res: Resource) -> bool:
    if not path.is_file():
        return False
    try:
        verify_checksum(path, sha256=res.sha256, md5=res.md5)
    except DataError:
        return False
    return True
