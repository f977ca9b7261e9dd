"""Generate ``proto/`` from the models: JSON Schemas and the subject map.

``proto/`` is what a consumer outside this code base reads to speak the
contract: one JSON Schema per event type (``proto/schemas/<Type>.json``), one
for the whole union (``proto/events.schema.json``) and the subject map
(``proto/subjects.json``). It is generated, never edited by hand::

    python -m libs.contract.proto           # (re)write proto/
    python -m libs.contract.proto --check   # exit 1, naming stale files

Schemas are built in pydantic's *serialization* mode: they describe the bytes
:func:`libs.contract.codec.encode` puts on the wire, which is what another
consumer receives. In that mode a ``Decimal`` is a string (validation mode
would also admit JSON numbers, the very floats the contract refuses), and
here the string also carries the exact pattern ``str(Decimal)`` produces.
Every field is required, since the encoder writes defaults too. Constraints
that only the decoder enforces (``gt=0`` on a price) are not repeated as JSON
Schema keywords in that mode.

Output is deterministic: sorted keys, two-space indent, a trailing newline.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from libs.contract.events import EVENT_ADAPTER, EVENT_TYPES
from libs.contract.subjects import RECORDED_SUBJECTS, REPLAY_PREFIX, STREAM, subject_map

#: Where ``make proto`` writes, relative to the repository root.
DEFAULT_ROOT = Path("proto")
#: Relative paths inside ``proto/``.
SCHEMAS_DIR = "schemas"
UNION_FILE = "events.schema.json"
SUBJECTS_FILE = "subjects.json"
#: The JSON Schema dialect pydantic generates.
DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _WireSchema(GenerateJsonSchema):
    """Pydantic's generator, with decimals pinned to the strings we emit."""

    def get_decimal_pattern(self, schema: core_schema.DecimalSchema) -> str | None:
        return self.build_decimal_pattern(schema)

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        # encode() writes every field, defaults included, so on the wire every
        # key is present and a consumer may rely on it (``type`` above all).
        if self.mode == "serialization":
            return True
        return super().field_is_required(field, total)


def _finish(schema: JsonSchemaValue, title: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"$schema": DIALECT, **schema}
    if title is not None:
        out["title"] = title
    return out


def event_schema(cls: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of one event class, as it travels on the wire."""
    return _finish(cls.model_json_schema(mode="serialization", schema_generator=_WireSchema))


def union_schema() -> dict[str, Any]:
    """The JSON Schema of any event (the discriminated union ``AnyEvent``)."""
    schema = EVENT_ADAPTER.json_schema(mode="serialization", schema_generator=_WireSchema)
    return _finish(schema, title="AnyEvent")


def subjects_document() -> dict[str, Any]:
    """The subject map plus what a consumer needs to find the stream."""
    return {
        "stream": STREAM,
        "recorded_subjects": list(RECORDED_SUBJECTS),
        "replay_prefix": REPLAY_PREFIX,
        "events": subject_map(),
    }


def dumps(document: Any) -> str:
    """Canonical text of a JSON document: sorted keys, stable, newline-terminated."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Every file of ``proto/``: relative POSIX path -> exact text."""
    files = {
        f"{SCHEMAS_DIR}/{name}.json": dumps(event_schema(cls))
        for name, cls in sorted(EVENT_TYPES.items())
    }
    files[UNION_FILE] = dumps(union_schema())
    files[SUBJECTS_FILE] = dumps(subjects_document())
    return dict(sorted(files.items()))


def _existing(root: Path) -> dict[str, str]:
    """The generated-looking files now under ``root`` (JSON files only)."""
    if not root.is_dir():
        return {}
    return {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(root.rglob("*.json"))
        if path.is_file()
    }


def stale(root: Path, expected: Mapping[str, str]) -> list[str]:
    """Relative paths under ``root`` that differ from ``expected``.

    A file is stale when it is missing, its text differs, or it is a JSON file
    that would no longer be generated (say, the schema of a removed event).
    """
    actual = _existing(root)
    return sorted(
        path for path in expected.keys() | actual.keys() if expected.get(path) != actual.get(path)
    )


def write(root: Path, expected: Mapping[str, str]) -> list[str]:
    """Make ``root`` match ``expected``; return the paths written or removed."""
    changed = stale(root, expected)
    for rel in changed:
        path = root / rel
        if rel in expected:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(expected[rel], encoding="utf-8", newline="\n")
        else:
            path.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m libs.contract.proto [--check] [--root DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m libs.contract.proto",
        description="Generate proto/ (JSON Schemas and subject map) from the event models.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and list the stale files if proto/ is out of date",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help=f"directory to write or check (default: {DEFAULT_ROOT})",
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    expected = render()
    if args.check:
        differing = stale(root, expected)
        if differing:
            print(
                f"{root} is stale; run `make proto`. Differing files:",
                *(f"  {root / rel}" for rel in differing),
                sep="\n",
                file=sys.stderr,
            )
            return 1
        print(f"{root} is up to date ({len(expected)} files)")
        return 0
    changed = write(root, expected)
    for rel in changed:
        print(f"{'wrote' if rel in expected else 'removed'} {root / rel}")
    print(f"{root}: {len(changed)} of {len(expected)} files changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
