"""Dagster-side bookkeeping without assets: the instance file, dead runs and pool waits, run planning."""
