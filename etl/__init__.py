"""Backfill historical user actions from a SQL warehouse into vendor event APIs.

The library does all the work; ``dagster_project`` only wires it. Start at
:func:`etl.runner.run_backfill`.
"""

__version__ = "0.1.0"
