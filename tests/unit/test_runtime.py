"""libs/runtime.py: what start-up built is kept out of the collector's sight."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from libs.runtime import keep_for_good


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_what_is_kept_for_good_is_frozen_and_garbage_is_collected_first() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    gone = weakref.ref(a)
    del a, b
    held = [Node() for _ in range(1_000)]
    frozen_before = gc.get_freeze_count()
    keep_for_good()
    assert gone() is None, "garbage from before was frozen instead of freed"
    assert gc.get_freeze_count() >= frozen_before + len(held)
    in_sight = {id(o) for o in gc.get_objects()}
    assert not [x for x in held if id(x) in in_sight]
