"""Materialization metadata shared by the stage assets: one row per file of the run."""


from dagster import MetadataValue

from mmrag.index.stages import FileOutcome
from mmrag.manifest import Status


def outcome_counts(values: dict) -> dict:
    skipped = sum(1 for v in values.values() if isinstance(v, FileOutcome) and v.status == Status.SKIPPED)
    failed = sum(1 for v in values.values() if isinstance(v, FileOutcome) and v.status == Status.FAILED)
    return {"files": len(values), "ok": len(values) - skipped - failed, "skipped": skipped, "failed": failed}


def files_table(rows: list[tuple[str, str, str]]) -> MetadataValue:
    """Markdown table (file, status, detail), capped so a 10k-file run stays readable."""
    lines = ["| file | status | detail |", "|---|---|---|"]
    for key, status, detail in rows[:200]:
        detail = detail.replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(f"| `{key}` | {status} | {detail} |")
    if len(rows) > 200:
        lines.append(f"| … | | {len(rows) - 200} more |")
    return MetadataValue.md("\n".join(lines))


def outcome_row(key: str, value) -> tuple[str, str, str] | None:
    if isinstance(value, FileOutcome):
        return key, value.status, value.reason
    return None
