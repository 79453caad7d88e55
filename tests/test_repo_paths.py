"""The repository cites only files it holds: preset headers, the README, benchmarks/RESULTS.md
and the sources name no design document or folder that a clone lacks (a note made elsewhere is
quoted, with its numbers, where it is needed)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "setup.py"]
    files += sorted((ROOT / "configs").rglob("*.yaml"))
    files += sorted(p for p in (ROOT / "benchmarks").rglob("*") if p.suffix in (".md", ".py"))
    files += sorted((ROOT / "src").rglob("*.py"))
    return [p for p in files if p.is_file()]


# The repository's file names: its top level and its source folders (not runs/, build/, caches).
NAMES = {p.name for p in ROOT.iterdir() if p.is_file()} | {
    p.name for d in ("configs", "benchmarks", "src", "tests") for p in (ROOT / d).rglob("*")
}
# An upper-case document name (RESULTS.md, README.md): it must be a file of the repository.
DOCUMENT = re.compile(r"\b([A-Z][A-Z0-9_-]*\.md)\b")
# A folder beside the repository, never part of a clone.
OUTSIDE = re.compile(r"\.\./shared\b|(?<![\w/.-])shared/")
# A repository path with a file name: configs/..., benchmarks/..., src/..., tests/...
REPO_PATH = re.compile(r"(?<![\w/.-])((?:configs|benchmarks|src|tests)/[\w./-]+\.(?:py|yaml|md))")


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def problems(path: Path) -> list[str]:
    """Each citation in ``path`` of a file or folder the repository does not hold."""
    found = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        where = f"{relative(path)}:{number}"
        for name in DOCUMENT.findall(line):
            if name not in NAMES:
                found.append(f"{where}: cites {name}, which the repository does not hold")
        if OUTSIDE.search(line):
            found.append(f"{where}: cites a folder outside the repository: {line.strip()}")
        for cited in REPO_PATH.findall(line):
            if "*" in cited or re.search(r"[A-Z]{3,}", cited):  # a pattern or a placeholder
                continue
            if not (ROOT / cited).exists():
                found.append(f"{where}: {cited} does not exist")
    return found


def test_cites_only_files_the_repository_holds():
    # files listed when the test runs (another checkout's edits may move some meanwhile)
    found = [line for path in text_files() for line in problems(path)]
    assert not found, "\n".join(found)


def test_the_check_catches_a_missing_document_and_an_outside_folder():
    design = "DESIGN" + ".md"
    assert DOCUMENT.findall(f"(see {design}, calibration)") == [design]
    assert design not in NAMES
    assert OUTSIDE.search("the notes in ../" + "shared/notes")
    assert not OUTSIDE.search("--out /shared/runs/b4096")  # an absolute example path is fine
    assert REPO_PATH.findall("see configs/sweeps/nowhere.yaml.") == ["configs/sweeps/nowhere.yaml"]
