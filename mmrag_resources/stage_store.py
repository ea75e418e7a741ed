"""An IO manager that stores each stage's per-file output under the data dir, one file per partition.

Dagster's filesystem IO manager cannot store one output that covers several partitions, and mmrag
runs many files per run (a partition range). Here an asset returns `{partition_key: value}` and
each value is pickled to `stages/<asset>/<hash of key>.pkl`; downstream assets receive the same
dict for the partitions of their run.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional

from dagster import ConfigurableIOManager, InputContext, OutputContext

from mmrag.files import write_atomic
from mmrag.index.stage_files import load_output
from mmrag.index.stage_files import stage_file_name as _name
from mmrag_resources._settings import resolved


class StageStore(ConfigurableIOManager):
    home: Optional[str] = None

    def _dir(self, asset_key) -> Path:
        return resolved(home=Path(self.home) if self.home else None).home / "stages" / "_".join(asset_key.path)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        d = self._dir(context.asset_key)
        d.mkdir(parents=True, exist_ok=True)
        keys = context.asset_partition_keys if context.has_asset_partitions else ["__all__"]
        if not isinstance(obj, dict) or set(keys) - set(obj):
            raise TypeError(f"{context.asset_key.to_user_string()} must return {{partition_key: value}} for {keys}")
        for key in keys:
            write_atomic(d / _name(key), pickle.dumps(obj[key], protocol=pickle.HIGHEST_PROTOCOL))

    def load_input(self, context: InputContext) -> Any:
        d = self._dir(context.asset_key)
        keys = context.asset_partition_keys if context.has_asset_partitions else ["__all__"]
        out = {}
        for key in keys:
            out[key] = load_output(d / _name(key))
        return out

    def delete(self, asset_key, partition_key: str) -> None:
        p = self._dir(asset_key) / _name(partition_key)
        if p.exists():
            p.unlink()
