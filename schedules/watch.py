"""Which folders are watched: sources registered by `mmrag ingest` plus MMRAG_WATCH (read per tick)."""


import os

from dagster import DefaultScheduleStatus, DefaultSensorStatus

from mmrag.manifest import Manifest


def automation_on() -> bool:
    """`mmrag up` sets MMRAG_AUTOMATION=on for the daemon it starts: the sensor and the schedule then
    run without being switched on in the UI (read when the definitions load)."""
    return os.environ.get("MMRAG_AUTOMATION", "").lower() in ("1", "on", "true", "yes")


def sensor_status() -> DefaultSensorStatus:
    return DefaultSensorStatus.RUNNING if automation_on() else DefaultSensorStatus.STOPPED


def schedule_status() -> DefaultScheduleStatus:
    return DefaultScheduleStatus.RUNNING if automation_on() else DefaultScheduleStatus.STOPPED


def sensor_interval_s(default: int = 30) -> int:
    """MMRAG_SENSOR_INTERVAL_S: seconds between two ticks of watch_folders (read when the definitions load)."""
    raw = os.environ.get("MMRAG_SENSOR_INTERVAL_S", "").strip()
    return max(1, int(raw)) if raw.isdigit() else default


def watched_roots(manifest: Manifest, env: dict | None = None) -> dict[str, str]:
    """`MMRAG_WATCH="docs=/data/docs;specs=/mnt/specs"` adds (or re-points) sources."""
    env = os.environ if env is None else env
    roots = manifest.sources()
    for item in filter(None, (env.get("MMRAG_WATCH") or "").split(";")):
        name, sep, root = item.partition("=")
        if sep and name.strip() and root.strip():
            roots[name.strip()] = root.strip()
            manifest.set_source(name.strip(), root.strip())
    return roots
