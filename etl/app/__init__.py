"""The application floor: the `etl` command, the demo, `etl bench` and `etl ui`.

The only part of ``etl`` that may import both the library and ``dagster_project``.
"""
