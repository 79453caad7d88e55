"""YAML read safely, with limits: a size cap and an alias-expansion budget (a few hundred bytes
of nested aliases otherwise expand to billions of values), never a ``!!python`` tag. Used for
configs, overrides, sweep and comparison specs and run directories' stored configs.

    >>> load_yaml_text("a: [1, 2]")
    {'a': [1, 2]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from largebatch.errors import UserError

YAML_MAX_BYTES = 4 * 1024 * 1024
"""The largest YAML file (config, sweep spec, run config) read: real ones are a few kB."""
YAML_MAX_NODES = 100_000
"""The most nodes a YAML document may hold once its aliases are expanded: a few hundred bytes of
nested aliases (a "billion laughs") otherwise expand to billions of values downstream."""


class YamlTooLarge(ValueError):
    """A YAML document beyond :data:`YAML_MAX_BYTES` or :data:`YAML_MAX_NODES`."""


def _expanded_nodes(root: yaml.Node) -> int:
    """How many nodes ``root`` holds with every alias expanded (each alias counts its whole
    target again); stops at :data:`YAML_MAX_NODES` and refuses an alias that contains itself."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children: list[yaml.Node] = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
        )
        if done:
            open_.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), YAML_MAX_NODES + 1)
            continue
        if key in open_:
            raise YamlTooLarge("an alias refers to a collection that contains it (a cycle)")
        open_.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_:
                raise YamlTooLarge("an alias refers to a collection that contains it (a cycle)")
            if id(child) not in sizes:
                stack.append((child, False))
    total = sizes[id(root)]
    if total > YAML_MAX_NODES:
        raise YamlTooLarge(
            f"its aliases (*name) expand to more than {YAML_MAX_NODES} values (an alias bomb?)"
        )
    return total


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no ``!!python/`` tags) that refuses a document whose aliases expand
    beyond :data:`YAML_MAX_NODES` before anything is constructed from it."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        if node is not None:
            _expanded_nodes(node)
        return node


def load_yaml_text(text: str | bytes) -> Any:
    """The one YAML reader of config files, ``KEY=VALUE`` override values, sweep specs and run
    configs: safe (no ``!!python/`` tags), at most :data:`YAML_MAX_BYTES`, and refusing an alias
    bomb or a nesting too deep for the parser. Raises ``yaml.YAMLError`` (bad YAML) or
    :class:`YamlTooLarge` (the limits); callers turn both into one :class:`UserError`."""
    if len(text) > YAML_MAX_BYTES:
        raise YamlTooLarge(
            f"it is {len(text)} bytes; the limit is {YAML_MAX_BYTES} (a config is a few kB)"
        )
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise YamlTooLarge("it nests too deeply to read") from None


def read_yaml_file(path: str | Path) -> Any:
    """:func:`load_yaml_text` of a file, checking its size before reading it."""
    path = Path(path)
    size = path.stat().st_size
    if size > YAML_MAX_BYTES:
        raise YamlTooLarge(
            f"it is {size} bytes; the limit is {YAML_MAX_BYTES} (a config is a few kB)"
        )
    with open(path, encoding="utf-8") as f:
        return load_yaml_text(f.read())


def describe_yaml_error(e: yaml.YAMLError) -> str:
    """What is wrong and where (``mapping values are not allowed here at line 3``); a
    ``!!python/`` tag is named as refused unread."""
    problem = str(getattr(e, "problem", None) or e or type(e).__name__)
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}" if mark is not None else ""
    if "tag:yaml.org,2002:python/" in problem:
        return f"a !!python/ tag{at}, refused unread: loading it could run code"
    return f"{problem}{at}"


def read_user_yaml(path: Path, what: str, error: type[Exception] = UserError, fix: str = "") -> Any:
    """:func:`read_yaml_file` of a file a user gave (a config, a spec, a run's config): every way
    it can fail is one ``error`` naming ``what`` and the file, then ``fix`` when given."""
    tail = f"; {fix}" if fix else ""
    try:
        return read_yaml_file(path)
    except YamlTooLarge as e:
        raise error(
            f"{what} '{path}' refused: {e}{tail or '; write the values out plainly'}"
        ) from None
    except yaml.YAMLError as e:
        raise error(f"{what} '{path}' is not valid YAML: {describe_yaml_error(e)}{tail}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} '{path}' cannot be read ({type(e).__name__}: {e}){tail}") from None
