"""Replaying dead letters: re-read their source rows, map them with today's mapping, resend.

Rows fixed in the warehouse (or a mapping or vendor setting fixed since) get delivered and move
from the dead-letter counter to the delivered one; the others stay dead with their new reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etl.config import PipelineConfig, resolve_credentials
from etl.events import DeadLetter, Event, Filtered
from etl.mapping import Mapper
from etl.sender import Sender
from etl.source import Source
from etl.state import open_store
from etl.vendors import vendor_class
from etl.vendors.base import encode_json


@dataclass
class ReplayReport:
    destination: str
    attempted: int = 0
    delivered: int = 0
    still_dead: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def replay_dead_letters(
    config: PipelineConfig, destination: str, partition: str | None = None
) -> ReplayReport:
    dest = config.destinations[destination]
    vendor = vendor_class(dest.vendor).from_config(dest)
    credentials = resolve_credentials(destination, dest)
    source = Source(config)
    store = open_store(config, source.engine)
    mapper = Mapper(destination, dest, config.source, vendor)
    letters = store.dead_letters(destination, partition)
    report = ReplayReport(destination, attempted=len(letters))
    if not letters:
        source.engine.dispose()
        store.engine.dispose()
        return report
    rows = source.rows_by_key([str(d["source_key"]) for d in letters], mapper.columns)
    by_key = {str(r[config.source.key_column]): r for r in rows}
    sender = Sender.for_destination(destination, dest, vendor, credentials, state=store)
    delivered: list[tuple[str, str]] = []
    still_dead: list[tuple[str, DeadLetter]] = []
    to_send: list[tuple[str, Event]] = []
    for letter in letters:
        row = by_key.get(str(letter["source_key"]))
        outcome = mapper.map_row(row) if row is not None else None
        if isinstance(outcome, Event):
            to_send.append((letter["partition"], outcome))
            continue
        if outcome is None:
            reason = "the source row no longer exists"
        elif isinstance(outcome, Filtered):
            reason = "the mapping's filter now excludes this row"
        else:
            reason = outcome.reason
        still_dead.append(
            (letter["partition"], DeadLetter(letter["event_id"], letter["source_key"], reason, {}))
        )
    size = min(dest.batch_size or vendor.endpoint().max_events, vendor.endpoint().max_events)
    try:
        for start in range(0, len(to_send), size):
            part = to_send[start : start + size]
            payloads = [vendor.encode(e) for _, e in part]
            result = sender.send([encode_json(p) for p in payloads])
            for i in result.delivered:
                delivered.append((part[i][0], part[i][1].event_id))
            for i, status, message in result.dead:
                rejected = DeadLetter(
                    part[i][1].event_id,
                    part[i][1].source_key,
                    f"rejected by vendor: {message}",
                    payloads[i],
                    status,
                    message,
                )
                still_dead.append((part[i][0], rejected))
    finally:
        sender.close()
        store.record_replay(destination, delivered, still_dead)
        source.engine.dispose()
        store.engine.dispose()
    report.delivered = len(delivered)
    report.still_dead = len(still_dead)
    for _, dead in still_dead:
        report.reasons[dead.reason] = report.reasons.get(dead.reason, 0) + 1
    return report
