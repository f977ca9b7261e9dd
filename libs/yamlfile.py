"""Config files in YAML, read strictly: a key given twice in one mapping is refused.

Plain ``yaml.safe_load`` keeps the last of two equal keys without a word, so
``quantity: 100`` followed by ``quantity: 100000`` in one strategy's params
is read as 100000: the very parameter typo the config validation is there to
catch. And YAML 1.1 reads ``16:00`` unquoted as a base-60 integer (960),
which a time field took for 960 seconds past midnight (00:16, in UTC): a
time of day written so is read as the string it looks like. Every config
loader (``strategies.yaml``, ``brokers.yaml``, ``paper.yaml``, and what
``tradebus up`` rewrites of them) reads through :func:`load_yaml`. Imported
only by those that read YAML: PyYAML is their dependency, not every service's.
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


def _no_base_60(loader: UniqueKeyLoader, node: yaml.ScalarNode) -> Any:
    # YAML 1.1 resolves 9:30 and 1:30.5 as base-60 numbers (570, 90.5); in a
    # config file such a value is a time of day (day_orders_expire_at: 16:00,
    # flatten_at: 15:55), so it is kept as written for its field to parse.
    value = loader.construct_scalar(node)
    if isinstance(value, str) and ":" in value:
        return value
    if node.tag == "tag:yaml.org,2002:int":
        return loader.construct_yaml_int(node)
    return loader.construct_yaml_float(node)


UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _no_base_60)
UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _no_base_60)


def load_yaml(text: str) -> Any:
    """Parse ``text`` as ``yaml.safe_load`` does, refusing duplicate keys.

    Raises :class:`yaml.YAMLError` (:class:`DuplicateKeyError` for a repeated key).
    """
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
