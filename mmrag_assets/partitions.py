"""One dynamic partition per source file; the key is `source:relative/path` (see mmrag.ids)."""

from dagster import DynamicPartitionsDefinition

from mmrag.orchestration.planner import PARTITIONS

source_files = DynamicPartitionsDefinition(name=PARTITIONS)
