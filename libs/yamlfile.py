"""Config files in YAML, read strictly: a key given twice in one mapping is refused.

Plain ``yaml.safe_load`` keeps the last of two equal keys without a word, so
``quantity: 100`` followed by ``quantity: 100000`` in one strategy's params
is read as 100000: the very parameter typo the config validation is there to
catch. Every config loader (``strategies.yaml``, ``brokers.yaml``,
``paper.yaml``, and what ``tradebus up`` rewrites of them) reads through
:func:`load_yaml`. Imported only by those that read YAML: PyYAML is their
dependency, not every service's.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice; names the key and both lines (1-based)."""

    def __init__(self, key: object, line: int, first_line: int) -> None:
        self.key = key
        self.line = line
        self.first_line = first_line
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"duplicate key {self.key!r} on line {self.line} (first on line "
            f"{self.first_line}); YAML would silently keep only the last"
        )


class UniqueKeyLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` that raises :class:`DuplicateKeyError` for a key
    given twice in one mapping."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # Checked before construct_mapping flattens merge keys (``<<: *base``), so
    # that a key overriding a merged one is not taken for a duplicate.
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
        except TypeError:  # unhashable: construct_mapping reports it
            continue
        if first is not None:
            raise DuplicateKeyError(key, line, first)
        seen[key] = line
    return dict(loader.construct_mapping(node))


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str) -> Any:
    """Parse ``text`` as ``yaml.safe_load`` does, refusing duplicate keys.

    Raises :class:`yaml.YAMLError` (:class:`DuplicateKeyError` for a repeated key).
    """
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
