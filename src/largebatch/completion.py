"""``largebatch completion SHELL``: a shell completion script generated from the CLI's parser.

The script is made by `shtab <https://pypi.org/project/shtab/>`_ from
:func:`largebatch.cli.build_parser`, so it names every command and option the CLI has, the
choices of options that have them, and, for the first argument of ``train``, ``sweep``,
``compare`` and ``bench``, the preset names beside files. To enable it (bash)::

    eval "$(largebatch completion bash)"     # in ~/.bashrc

zsh: ``largebatch completion zsh > "${fpath[1]}/_largebatch"``; fish:
``largebatch completion fish > ~/.config/fish/completions/largebatch.fish``.
``shtab`` is in the ``completion`` extra (``pip install 'largebatch[completion]'``).
"""

from __future__ import annotations

import argparse
from typing import Any

from largebatch.errors import UserError

SHELLS = ("bash", "zsh", "fish", "tcsh")
EXTRA = "completion"

# The first positional argument of these commands: a file or a preset in configs/<subdir>.
PRESET_ARGS = {"train": "", "bench": "", "sweep": "sweeps", "compare": "compare"}
DIR_DESTS = {"dirs", "run", "run_a", "run_b", "out", "root"}


def _preset_names(subdir: str) -> list[str]:
    from largebatch.presets import list_presets

    return list(list_presets(subdir))


def _function(command: str) -> str:
    return f"_largebatch_presets_{command}"


def _preamble(shell: str) -> str:
    """Shell functions that offer a command's preset names, then files (bash and zsh)."""
    out = []
    for command, subdir in PRESET_ARGS.items():
        names = " ".join(_preset_names(subdir))
        if shell == "bash":
            out.append(
                f'{_function(command)}() {{\n  compgen -W "{names}" -- "$1"\n'
                '  compgen -f -- "$1"\n}'
            )
        elif shell == "zsh":
            out.append(f"{_function(command)}() {{\n  compadd -- {names}\n  _files\n}}")
    return "\n".join(out)


def _mark(parser: argparse.ArgumentParser, shell: str, command: str | None = None) -> None:
    """Set shtab's ``complete`` on the arguments that take presets, files or folders."""
    import shtab

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _mark(sub, shell, name if command is None else f"{command} {name}")
            continue
        if not action.option_strings and action.dest in ("config", "spec") and command:
            if shell in ("bash", "zsh") and command in PRESET_ARGS:
                action.complete = {shell: _function(command)}  # type: ignore[attr-defined]
            else:
                action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.dest in DIR_DESTS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` (the CLI's, :func:`largebatch.cli.build_parser`) for
    ``shell`` (one of :data:`SHELLS`)."""
    if shell not in SHELLS:
        raise UserError(f"no completion for shell '{shell}'; valid: {', '.join(SHELLS)}")
    try:
        import shtab
    except ImportError:
        raise UserError(
            f"shell completion needs the 'shtab' package: pip install 'largebatch[{EXTRA}]' "
            "(or pip install shtab)"
        ) from None
    _mark(parser, shell)
    return shtab.complete(parser, shell=shell, preamble=_preamble(shell))


def cmd_completion(args: argparse.Namespace) -> int:
    print(completion_script(args.root_parser, args.shell))
    return 0


def add_completion_parser(sub: Any, root: argparse.ArgumentParser) -> None:
    """Add ``completion`` to the CLI's sub-parsers; ``root`` is the whole CLI's parser."""
    p = sub.add_parser(
        "completion",
        help='print a shell completion script (bash: eval "$(largebatch completion bash)")',
        description="Print a completion script for SHELL, generated from this CLI's parser. "
        'bash: add  eval "$(largebatch completion bash)"  to ~/.bashrc.',
    )
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(func=cmd_completion, root_parser=root)
