"""Materialization metadata shared by the stage assets: counts, one row per file of the run, usage.

Dagster copies a step's output metadata into the materialization event of every partition of the
run, so whatever the metadata holds is stored once per file. It holds counts; the per-file table is
metadata only in a one-file run (the sensor's usual), and otherwise is written once, to the step's
log (`per_file`): a 200-file run's table stored 200 times per stage made the instance grow by
~255 KB per indexed file.
"""


from dagster import MetadataValue

from mmrag.index.stages import FileOutcome
from mmrag.manifest import Status
from mmrag_resources._settings import resolved


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


def per_file(context, rows: list[tuple[str, str, str]]) -> dict:
    """The run's per-file table: metadata for a one-file run, else one log line (see above)."""
    table = files_table(rows)
    if len(context.partition_keys) <= 1:
        return {"per_file": table}
    if not rows:
        return {}
    context.log.info(f"per file ({len(rows)} files):\n{table.value}")
    return {}


def outcome_row(key: str, value) -> tuple[str, str, str] | None:
    if isinstance(value, FileOutcome):
        return key, value.status, value.reason
    return None


USAGE_TAG = "mmrag/usage/"  # run tags: the run's model usage, summed over its steps
_TAGGED = ("requests", "prompt_tokens", "completion_tokens", "images", "cache_hits")


def report_usage(context, meter, manifest) -> dict:
    """A step's model usage (`mmrag.models.usage.UsageMeter`): added to the files' sums in the
    manifest and to the run's tags (`mmrag/usage/<count>`, and `cost_usd` with MMRAG_PRICES); returns
    the step's materialization metadata (a few numbers; nothing when no request was made)."""
    from dagster import MetadataValue

    from mmrag.models.usage import summary

    rows = meter.snapshot()
    if not any(rows.values()):
        return {}
    manifest.add_usage(rows)
    try:
        prices = resolved().prices()
    except ValueError as e:  # a bad price table costs the report its cost, not the run
        context.log.warning(str(e))
        prices = None
    s = summary(rows, prices)
    step = {k: s[k] for k in _TAGGED} | ({"cost_usd": s["cost"]["usd"]} if "cost" in s else {})
    try:
        run = context.instance.get_run_by_id(context.run_id)
        old = run.tags if run is not None else {}
        tags = {}
        for k, v in step.items():
            before = old.get(USAGE_TAG + k, "0")
            total = (float(before) if k == "cost_usd" else int(before)) + v
            tags[USAGE_TAG + k] = str(round(total, 6) if k == "cost_usd" else total)
        context.instance.add_run_tags(context.run_id, tags)
    except Exception as e:  # noqa: BLE001 - the run's tags are a report: never fail the step for them
        context.log.warning(f"could not tag the run with its model usage: {type(e).__name__}: {e}")
    meta = {f"usage_{k}": v for k, v in step.items()}
    meta["model_usage"] = MetadataValue.json({m: {k: u[k] for k in ("requests", "prompt_tokens", "completion_tokens",
                                                                    "images", "cache_hits")}
                                              for m, u in s["by_model"].items()} | (
        {"cost": s["cost"]} if "cost" in s else {}))
    return meta
