"""Build step that ships the presets: ``configs/`` (the source of truth, at the repository root)
is copied into the package as ``largebatch/configs/`` in regular (non-editable) builds, so
``largebatch train mnist1d_cnn`` works from any directory. Editable installs read ``configs/``
from the source tree instead (see ``largebatch.presets``). Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithPresets(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source = ROOT / "configs"
        target = Path(self.build_lib) / "largebatch" / "configs"
        for f in sorted(source.rglob("*.yaml")):
            dest = target / f.relative_to(source)
            self.mkpath(str(dest.parent))
            self.copy_file(str(f), str(dest))


setup(cmdclass={"build_py": BuildPyWithPresets})
