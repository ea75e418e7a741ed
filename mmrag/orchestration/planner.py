"""Run planning: which Dagster runs carry which files (contiguous partition ranges), and their tags."""

from __future__ import annotations

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def contiguous_ranges(keys: list[str], ordered: list[str], max_len: int = 200) -> list[tuple[str, str]]:
    """Group keys into runs of adjacent partitions, one run request per range (many files per run),
    at most `max_len` files each so one run's per-file outputs stay small in memory."""
    wanted = set(keys)
    ranges, start, prev, n = [], None, None, 0
    for k in ordered:
        if k in wanted and n < max_len:
            if start is None:
                start, n = k, 0
            prev, n = k, n + 1
            continue
        if start is not None:
            ranges.append((start, prev))
            start, n = None, 0
        if k in wanted:
            start, prev, n = k, k, 1
    if start is not None:
        ranges.append((start, prev))
    return ranges


def range_tags(start: str, end: str) -> dict[str, str]:
    return {RANGE_START_TAG: start, RANGE_END_TAG: end}
