"""One dynamic partition per source file; the key is `source:relative/path` (see mmrag.ids)."""

from dagster import DynamicPartitionsDefinition

source_files = DynamicPartitionsDefinition(name="source_files")
