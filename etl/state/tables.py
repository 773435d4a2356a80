"""The state tables, declared here and only here.

``sql/state_tables.sql`` is generated from these declarations (``etl state-ddl``) for the people
who review warehouse changes, and a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

COUNTERS = ("rows_read", "delivered", "dead_letters", "filtered", "in_doubt")
# what a committed batch adds
ADVANCED = (*COUNTERS, "requests", "retries", "throttled", "near_misses")


@dataclass(frozen=True)
class StateTables:
    checkpoints: sa.Table
    batches: sa.Table
    dead_letters: sa.Table
    deliveries: sa.Table
    leases: sa.Table
    rate_budget: sa.Table

    def all(self) -> list[sa.Table]:
        return [
            self.checkpoints,
            self.batches,
            self.dead_letters,
            self.deliveries,
            self.leases,
            self.rate_budget,
        ]


_TS = sa.DateTime(timezone=True)


def state_tables(metadata: sa.MetaData, prefix: str, schema: str | None) -> StateTables:
    """The state tables, named ``<prefix>checkpoints`` and so on."""
    return StateTables(
        *(
            declare(metadata, prefix, schema)
            for declare in (
                _checkpoints,
                _batches,
                _dead_letters,
                _deliveries,
                _leases,
                _rate_budget,
            )
        )
    )


def _checkpoints(metadata: sa.MetaData, prefix: str, schema: str | None) -> sa.Table:
    return sa.Table(
        f"{prefix}checkpoints",
        metadata,
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("partition", sa.String(10), primary_key=True, comment="UTC day, YYYY-MM-DD"),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("cursor", sa.Text, comment="last committed (timestamp, key), JSON"),
        *(sa.Column(c, sa.BigInteger, nullable=False, default=0) for c in COUNTERS),
        sa.Column("requests", sa.BigInteger, nullable=False, default=0),
        sa.Column("retries", sa.BigInteger, nullable=False, default=0),
        sa.Column("throttled", sa.BigInteger, nullable=False, default=0, comment="429s"),
        *(
            sa.Column(name, sa.BigInteger, nullable=False, server_default="0", comment=what)
            for name, what in (
                ("deleted", "rows read, then gone from the source (not sent again)"),
                ("moved", "rows read, then moved to another day by a new timestamp (sent there)"),
                ("changed", "rows whose content changed after they were read (not sent again)"),
                ("near_misses", "rows filtered only because of case or spaces in a value"),
            )
        ),
        sa.Column("near_miss", sa.Text, comment="the first such: mapping.filter column, value"),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("settings", sa.Text, comment="JSON {event setting: hash}: names a change"),
        sa.Column("error", sa.Text),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("completed_at", _TS),
        sa.Column("log_purged_at", _TS, comment="delivery log purged: late rows not re-checked"),
        schema=schema,
    )


def _batches(metadata: sa.MetaData, prefix: str, schema: str | None) -> sa.Table:
    return sa.Table(
        f"{prefix}batches",
        metadata,
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("partition", sa.String(10), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("first_position", sa.Text, nullable=False),
        sa.Column("last_position", sa.Text, nullable=False),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, comment="sent, acked, in_doubt"),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("last_http_status", sa.Integer),
        sa.Column("sent_at", _TS),
        sa.Column("acked_at", _TS),
        sa.Column("batch_id", sa.String(40), comment="the request(s) that carried this slice"),
        sa.Column(
            "kind", sa.String(10), nullable=False, server_default="run", comment="run, replay"
        ),
        sa.Column("event_keys", sa.Text, comment="JSON: source keys of the slice's events"),
        sa.Column(
            "unknown",
            sa.Text,
            comment="JSON: per event, requests whose fate is unknown (they may have landed); "
            "one number: the same for every event",
        ),
        sa.Index(f"ix_{prefix}batches_batch_id", "destination", "batch_id"),
        schema=schema,
    )


def _dead_letters(metadata: sa.MetaData, prefix: str, schema: str | None) -> sa.Table:
    return sa.Table(
        f"{prefix}dead_letters",
        metadata,
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(32), primary_key=True),
        sa.Column("partition", sa.String(10), nullable=False),
        sa.Column("source_key", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("vendor_status", sa.Integer),
        sa.Column("vendor_message", sa.Text),
        sa.Column("payload", sa.Text, nullable=False, comment="JSON: the payload, or the row"),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("replayed_at", _TS),
        schema=schema,
    )


def _deliveries(metadata: sa.MetaData, prefix: str, schema: str | None) -> sa.Table:
    return sa.Table(
        f"{prefix}deliveries",
        metadata,
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("partition", sa.String(10), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, comment="its slice in the ledger (batches)"),
        sa.Column("source_keys", sa.Text, nullable=False, comment="JSON list, in order"),
        sa.Column(
            "outcomes",
            sa.Text,
            nullable=False,
            comment="a letter per key: d delivered, x dead letter, f filtered, m moved away",
        ),
        sa.Column("content_hashes", sa.Text, nullable=False, comment="CRC-32 per key, <u4 hex"),
        sa.Column("in_doubt", sa.Text, comment="JSON {index: copies maybe extra}"),
        sa.Column(
            "gone", sa.Text, comment='JSON {index: [when, "deleted" or "moved"]}: left the source'
        ),
        sa.Column("recorded_at", _TS, nullable=False),
        # the retention purge finds what is old without reading the log
        sa.Index(f"ix_{prefix}deliveries_recorded_at", "destination", "recorded_at"),
        schema=schema,
        comment="the per-row delivery log, a row per slice: which source row went where",
    )


def _leases(metadata: sa.MetaData, prefix: str, schema: str | None) -> sa.Table:
    return sa.Table(
        f"{prefix}leases",
        metadata,
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("partition", sa.String(10), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False, comment="host:pid:token"),
        sa.Column("host", sa.String(100), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("acquired_at", _TS, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False, comment="seconds since the epoch"),
        schema=schema,
        comment="one run per destination and partition at a time",
    )


def _rate_budget(metadata: sa.MetaData, prefix: str, schema: str | None) -> sa.Table:
    return sa.Table(
        f"{prefix}rate_budget",
        metadata,
        sa.Column(
            "key", sa.String(64), primary_key=True, comment="endpoint and credential, hashed"
        ),
        sa.Column(
            "next_slot",
            sa.Double,
            nullable=False,
            comment="seconds since the epoch (rate_limit.shared, etl/shared_budget.py)",
        ),
        sa.Column(
            "spacing",
            sa.Double,
            nullable=False,
            server_default=sa.text("0"),
            comment="seconds between slots after a refusal at the pace (0: the limit's)",
        ),
        sa.Column(
            "last_left",
            sa.Double,
            nullable=False,
            server_default=sa.text("0"),
            comment="when the last request left, requests one at a time (seconds since the epoch)",
        ),
        schema=schema,
    )


def generate_ddl(dialect_name: str = "postgresql", prefix: str = "etl_") -> str:
    """The CREATE TABLE statements of the state tables, for sql/state_tables.sql."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialects: dict[str, sa.Dialect] = {
        "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
        "sqlite": sqlite.dialect(),
    }
    dialect = dialects[dialect_name]
    tables = state_tables(sa.MetaData(), prefix, None)
    parts = []
    for table in tables.all():
        statements: list[sa.schema.ExecutableDDLElement] = [sa.schema.CreateTable(table)]
        statements += [
            sa.schema.CreateIndex(i) for i in sorted(table.indexes, key=lambda i: str(i.name))
        ]
        text = "\n".join(str(s.compile(dialect=dialect)).strip() + ";" for s in statements)
        parts.append("\n".join(line.rstrip() for line in text.splitlines()))
    header = (
        f"-- State tables of etl-backfill ({dialect_name}, prefix {prefix!r}).\n"
        "-- Generated by `etl state-ddl` from etl/state/tables.py, which creates them when\n"
        "-- absent; with state.schema set they are created in that schema.\n\n"
    )
    return header + "\n\n".join(parts) + "\n"
