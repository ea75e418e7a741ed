"""Extraction units (mmrag.graph.units): pure planning, no LightRAG."""

from __future__ import annotations

import random

from mmrag.graph.units import attribute_entity, attribute_relation, plan_units


def _doc(seed: int, n: int = 60) -> tuple[list[str], list[int]]:
    rnd = random.Random(seed)
    texts = [f"chunk {seed}-{i} {rnd.random()}" for i in range(n)]
    return texts, [rnd.randint(60, 180) for _ in range(n)]


def test_units_cover_the_chunks_in_order_within_the_size():
    for seed in range(20):
        texts, tokens = _doc(seed)
        units = plan_units(texts, tokens, 1200)
        assert [i for u in units for i in u.members] == list(range(len(texts)))  # every chunk once, in order
        assert all(u.tokens <= 1200 for u in units)
        assert all(u.content == "\n\n".join(texts[i] for i in u.members) for u in units)
        assert len(units) < len(texts) / 4  # far fewer requests than one per chunk


def test_a_small_document_is_one_unit_and_size_zero_is_one_unit_per_chunk():
    texts, tokens = _doc(1, n=6)
    assert len(plan_units(texts, tokens, 10_000)) == 1
    assert [u.members for u in plan_units(texts, tokens, 0)] == [(i,) for i in range(6)]
    assert plan_units([], [], 1200) == []
    big = plan_units(["one very long chunk"], [5000], 1200)  # a chunk over the size is a unit alone
    assert [u.members for u in big] == [(0,)]


def test_inserting_a_chunk_changes_few_units():
    """Content-defined cuts re-synchronise after an edit: the units after it are mostly the same text."""
    changed = []
    for seed in range(40):
        texts, tokens = _doc(seed)
        before = {u.content for u in plan_units(texts, tokens, 1200)}
        k = seed % len(texts)
        texts2, tokens2 = texts[:k] + [f"inserted {seed}"] + texts[k:], tokens[:k] + [120] + tokens[k:]
        after = plan_units(texts2, tokens2, 1200)
        changed.append(sum(u.content not in before for u in after))
    assert sum(changed) / len(changed) < 3.0 and sorted(changed)[len(changed) // 2] <= 2, changed


def test_entities_and_relations_are_attributed_to_the_chunks_naming_them():
    members = {"c1": "The Acme Pump moves sodium.", "c2": "The Turbine Hall holds the acme pump.", "c3": "Noise."}
    assert attribute_entity("Acme Pump", members) == ["c1", "c2"]  # case-insensitive
    assert attribute_entity("Unnamed Thing", members) == ["c1", "c2", "c3"]  # paraphrased: the whole unit
    assert attribute_relation("Acme Pump", "Turbine Hall", members) == ["c2"]  # both ends named
    assert attribute_relation("Turbine Hall", "Sodium Loop", members) == ["c2"]  # one end named
    assert attribute_relation("X", "Y", members) == ["c1", "c2", "c3"]
