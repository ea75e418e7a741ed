"""Discovery files under MMRAG_HOME: where this data dir's services listen while they run.

- `api.json`: the query API (`mmrag api`, also under `mmrag up`); `mmrag query` sends its questions
  there instead of loading the models itself.
- `milvus-server.json`: the Milvus Lite server that `mmrag up` runs on the data dir; every other
  process (`mmrag ingest`, `query`, `gc`, the runs) connects to it instead of opening the locked data
  dir (`Settings.from_env`).
- `embed-service.json`: the warm embedding service that `mmrag up` runs (`mmrag.serve.embeddings`) and
  the models it serves; a process whose text model and CLIP are those uses it instead of loading them
  (`Settings.from_env`).
- `parse-service.json` (mode 0600): the warm parse service (`mmrag.parsing.service`), its address, key
  and worker configuration; a run whose parse configuration is that one sends its files there.

Each file names its owner process (`mmrag.orchestration.runs.owner_tags`: host, pid, start time); a
file whose owner is gone is ignored, so a killed service leaves nothing that misleads.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mmrag.files import write_atomic

API = "api.json"
MILVUS = "milvus-server.json"
EMBED = "embed-service.json"
PARSE = "parse-service.json"


def announce(home: Path, name: str, info: dict, pid: int | None = None, private: bool = False) -> Path:
    """Write `info` (plus when, and the owner process `pid`, default this one) to `home`/`name`;
    `private`: readable by this user only (it holds a key)."""
    from mmrag.orchestration.runs import owner_tags

    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    data = json.dumps({**info, "started": time.time(), **owner_tags(pid)})
    return write_atomic(home / name, data, mode=0o600 if private else 0o666)


def lookup(home: Path, name: str) -> dict | None:
    """What `home`/`name` says, if it is there and its owner process is alive."""
    from mmrag.orchestration.runs import owner_alive

    try:
        info = json.loads((Path(home) / name).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and owner_alive(info) else None


def withdraw(home: Path, name: str, pid: int | None = None) -> None:
    """Remove `home`/`name` if process `pid` (default: this one) wrote it; any owner with pid=0."""
    from mmrag.orchestration.runs import PID_TAG

    path = Path(home) / name
    try:
        if pid == 0 or json.loads(path.read_text()).get(PID_TAG) == str(os.getpid() if pid is None else pid):
            path.unlink()
    except (OSError, ValueError):
        pass


def served_lite_uri(home: Path) -> str:
    """The URI of the Milvus Lite server `mmrag up` runs on this data dir, or "" when none runs."""
    info = lookup(home, MILVUS)
    return info.get("uri", "") if info else ""


def served_embeddings(home: Path, text_model: str, clip: str) -> str:
    """The URL of the embedding service `mmrag up` runs on this data dir when it serves this text model
    and CLIP (`<model>/<pretrained>`), or "" (none runs, or it serves other models)."""
    info = lookup(home, EMBED)
    if not info or info.get("text_model") != text_model or info.get("clip") != clip:
        return ""
    return info.get("url", "")


def served_parser(home: Path, config_key: str) -> tuple[tuple[str, int], bytes] | None:
    """(address, key) of the parse service `mmrag up` runs on this data dir when its worker
    configuration is `config_key` (`mmrag.parsing.service.config_key`), else None."""
    info = lookup(home, PARSE)
    if not info or info.get("config") != config_key:
        return None
    try:
        host, port = info["address"]
        return (str(host), int(port)), bytes.fromhex(info["authkey"])
    except (KeyError, TypeError, ValueError):
        return None


def running_api(home: Path) -> str | None:
    """The URL of this data dir's query API: MMRAG_API_URL, else the one that announced itself and
    whose process is alive; None when there is none."""
    url = os.environ.get("MMRAG_API_URL", "").strip()
    if url:
        return url.rstrip("/")
    info = lookup(home, API)
    return info.get("url") if info else None
