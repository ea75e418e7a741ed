"""Where each stage's per-file output lives on disk: `$MMRAG_HOME/stages/<asset>/<hash of key>.pkl`.

Written by the `stage_store` IO manager (mmrag_resources.stage_store); read back by it, by blob
garbage collection and by the index audit.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

STAGES = ("raw_files", "parsed_blocks", "modal_descriptions", "embeddings", "milvus_partitions", "lightrag_graph")

# Modules whose classes earlier versions pickled, and where those classes live now: an output
# written before an upgrade still loads.
MOVED = {"mmrag.stages": "mmrag.index.stages", "mmrag.state": "mmrag.manifest", "mmrag.media": "mmrag.parsing.media",
         "mmrag.subtitles": "mmrag.parsing.subtitles", "mmrag.sync": "mmrag.sources.sync"}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return super().find_class(MOVED.get(module, module), name)


def stage_file_name(key: str) -> str:
    """The file name of a partition's output (keys are paths: hashed to a fixed-length name)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".pkl"


def stage_file(home: Path, stage: str, key: str) -> Path:
    return Path(home) / "stages" / stage / stage_file_name(key)


def load_output(path: Path) -> Any:
    with open(path, "rb") as f:
        return _Unpickler(f).load()
