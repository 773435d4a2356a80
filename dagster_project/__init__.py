"""The Dagster layer: partitioned assets, checks, schedule and sensor around the etl library."""
