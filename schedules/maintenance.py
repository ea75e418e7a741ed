"""maintenance_schedule: daily at 04:00, `maintenance_job` (superseded old runs, unreferenced blobs).

On with the sensor and the re-index schedule (`mmrag up`, MMRAG_AUTOMATION); audit_schedule (the index
audit, 04:30) stays off until switched on in the UI.
"""

from dagster import ScheduleDefinition

from mmrag_assets.maintenance import maintenance_job
from schedules.watch import schedule_status

maintenance_schedule = ScheduleDefinition(
    name="maintenance_schedule", job=maintenance_job, cron_schedule="0 4 * * *", default_status=schedule_status(),
    description="Purge superseded Dagster runs older than MMRAG_RUN_RETENTION_DAYS and unreferenced blobs.")
