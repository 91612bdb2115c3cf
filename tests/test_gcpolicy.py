"""The GC policy a ticking process settles into (agent.gcpolicy), and that it is undone."""

from __future__ import annotations

import gc

from agent import gcpolicy


def test_settle_freezes_what_is_loaded_and_unsettle_restores_the_thresholds():
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    kept = [object() for _ in range(1000)]  # alive now: moved out of the collector's sight
    old = gcpolicy.settle()
    try:
        assert old == before
        assert gc.get_threshold()[0] >= gcpolicy.YOUNG_THRESHOLD
        assert gc.get_freeze_count() > frozen_before
    finally:
        gcpolicy.unsettle(old)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert len(kept) == 1000


def test_cycles_are_still_collected_after_settling():
    old = gcpolicy.settle()
    try:
        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle only the collector frees
        del a, b
        assert gc.collect() >= 2
    finally:
        gcpolicy.unsettle(old)
