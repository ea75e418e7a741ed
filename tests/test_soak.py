"""The soak, short: `mmrag up` on the embedded defaults with the loopback model server (0.1 s a reply, 5 %
of requests answered 500) while small and office files are created, edited and deleted (a burst among
them), clients query all the while, and the embedding service, the parse service, the daemon and an ingest
run are each SIGKILLed once. Afterwards the index equals a clean ingest of the final folder, no query
failed except with a 503, memory stayed bounded, and nothing is left running. The long one (1,000 + 20
files over ~10 minutes) is `bench/soak.py`; `tests/soak_tools.py` plays both."""

from __future__ import annotations

import pytest
from soak_tools import Plan, soak

pytestmark = pytest.mark.slow


def test_soak_short(tmp_path):
    plan = Plan(small=24, office=2, minutes=1.5, burst=10, edits=0.2, deletes=0.1, clients=4, probe_every=4, settle_s=900)
    res = soak(plan, tmp_path, say=lambda s: print(s, flush=True))
    print(res.queries, res.freshness, res.rss_peak_mb, res.restarts, res.kills, f"settled in {res.settle_s} s")
    assert not res.differences, res.differences
    assert not res.dangling, res.dangling
    assert res.up_exit == 0 and not res.left_running, (res.up_exit, res.left_running, res.log)
    killed = {part for part, _, what in res.kills if "not running" not in what and "no run" not in what}
    assert {"embed", "parse", "daemon"} <= killed, res.kills
    for part in ("embed", "parse", "daemon"):
        assert res.restarts[part] == 1, (part, res.restarts, res.log)
    assert res.events["create"] == 26 and res.events["delete"] >= 2 and res.events["edit"] >= 4, res.events
    # Queries: answered all the while; the only failure allowed is a 503 while a part restarts.
    assert res.queries["ok"] > 40, res.queries
    assert all(b.startswith("503") for b in res.bad_answers), res.bad_answers
    assert res.queries["by_status"].get("503", 0) <= 0.05 * res.queries["ok"], res.queries
    # Every probed file was found, in bounded time.
    assert res.freshness["found"] == res.freshness["probes"] > 0, res.freshness
    # Memory: no part of `up` beyond what its models explain (torch in the embedding service and each run).
    assert res.rss_peak_mb["up (all parts)"] < 9000, res.rss_peak_mb
    assert res.rss_peak_mb.get("api", 0) < 2500 and res.rss_peak_mb.get("milvus", 0) < 1500, res.rss_peak_mb
