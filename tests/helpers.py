"""Helpers for end-to-end tests: run the CLI in-process, read the index back."""

from __future__ import annotations

import json

from mmrag.cli import main
from mmrag.config import Settings
from mmrag.milvus_store import IMAGE, TEXT, MilvusStore


def cli_json(capsys, *args) -> tuple[int, dict]:
    capsys.readouterr()
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def store() -> MilvusStore:
    s = Settings.from_env()
    return MilvusStore(s.resolved_milvus_uri, prefix=s.collection_prefix)


def rows_by_file(modality: str = TEXT) -> dict[str, set[str]]:
    st = store()
    out: dict[str, set[str]] = {}
    if not st.has(modality):
        return out
    for r in st.client.query(st._loaded(modality), filter="", output_fields=["id", "file_key"], limit=16384):
        out.setdefault(r["file_key"], set()).add(r["id"])
    return out


__all__ = ["cli_json", "store", "rows_by_file", "TEXT", "IMAGE"]


def wait_while_up(what: str, check, timeout: float, proc, log):
    """Poll `check()` every second until it returns something truthy (returned), while the `mmrag up`
    process `proc` runs; fail with the end of its `log` if it exits or `timeout` passes."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mmrag up exited while waiting for {what}:\n{log.read_text()[-3000:]}"
        try:
            if got := check():
                return got
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"no {what} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
