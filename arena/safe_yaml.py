"""Safe YAML reading for scenarios: bounded alias expansion, YAML 1.2 floats, no duplicate keys, and a map from
every field to the line where it is written (for error messages)."""

from __future__ import annotations

import re
from typing import Any

import yaml

#: The most YAML nodes a scenario may expand to through aliases: far above any real scenario, far below a bomb.
MAX_NODES = 20_000
_FLOAT_12 = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)$")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-4`` and ``1.0e9`` as numbers (as YAML 1.2 and every researcher do) and
    refusing duplicate keys instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+.0123456789"))


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many nodes ``node`` stands for once aliases are expanded; raises on a node that contains itself."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise yaml.YAMLError("a recursive alias (a node that contains itself)")
    open_.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    size = 1 + sum(_expanded_size(child, sizes, open_) for child in children)
    open_.discard(key)
    sizes[key] = min(size, MAX_NODES + 1)
    return sizes[key]


def read_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """Parse a scenario's text safely: bounded alias expansion, YAML 1.2 floats, no duplicate keys. Returns the data
    and its node tree (for line numbers); raises ``yaml.YAMLError``."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        if _expanded_size(node, {}, set()) > MAX_NODES:
            raise yaml.YAMLError(f"it expands to more than {MAX_NODES:,} values through aliases (an alias bomb?)")
        return loader.construct_document(node), node
    finally:
        loader.dispose()


def line_map(node: yaml.Node, path: tuple = (), lines: dict | None = None) -> dict[tuple, int]:
    """Map every field path of the YAML document to the 1-based line where it is written."""
    lines = {} if lines is None else lines
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[path + (key.value,)] = key.start_mark.line + 1
            line_map(value, path + (key.value,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            line_map(item, path + (index,), lines)
    return lines
