"""Replaying dead letters: re-read their source rows, map them with today's mapping, resend.

Rows fixed in the warehouse (or a mapping or vendor setting fixed since) get delivered and move
from the dead-letter counter to the delivered one; the others stay dead with their new reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from etl.config import PipelineConfig
from etl.destination import Destination, resolve_destination
from etl.events import DeadLetter, Event, Filtered
from etl.loader import resolve_credentials
from etl.sender import Sender, open_sender
from etl.source import Source
from etl.state import open_store
from etl.vendors.base import encode_json

Replayed = tuple[str, Event]  # a dead letter's partition, and its row's event as mapped today


@dataclass
class ReplayReport:
    destination: str
    attempted: int = 0
    delivered: int = 0
    still_dead: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class _Outcome:
    delivered: list[tuple[str, str]] = field(default_factory=list)  # (partition, event id)
    still_dead: list[tuple[str, DeadLetter]] = field(default_factory=list)


def replay_dead_letters(
    config: PipelineConfig, destination: str, partition: str | None = None
) -> ReplayReport:
    """Map the dead letters' rows again and send what is now valid."""
    dest = resolve_destination(config, destination)
    credentials = resolve_credentials(destination, dest.config)
    source = Source(config)
    store = open_store(config, source.engine)
    try:
        letters = store.dead_letters(destination, partition)
        report = ReplayReport(destination, attempted=len(letters))
        if not letters:
            return report
        outcome = _Outcome()
        to_send = _remap(dest, source, letters, outcome)
        sender = open_sender(dest, credentials, store)
        try:
            _send(dest, sender, to_send, outcome)
        finally:
            sender.close()
            store.record_replay(destination, outcome.delivered, outcome.still_dead)
    finally:
        source.engine.dispose()
        store.engine.dispose()
    report.delivered = len(outcome.delivered)
    report.still_dead = len(outcome.still_dead)
    for _, dead in outcome.still_dead:
        report.reasons[dead.reason] = report.reasons.get(dead.reason, 0) + 1
    return report


def _remap(
    dest: Destination, source: Source, letters: list[dict[str, Any]], outcome: _Outcome
) -> list[Replayed]:
    """The letters' rows read and mapped again: the events to send; the rest stay dead."""
    mapper = dest.mapper
    rows = source.rows_by_key([str(d["source_key"]) for d in letters], mapper.columns)
    by_key = {str(r[mapper.key_column]): r for r in rows}
    to_send: list[Replayed] = []
    for letter in letters:
        row = by_key.get(str(letter["source_key"]))
        mapped = mapper.map_row(row) if row is not None else None
        if isinstance(mapped, Event):
            to_send.append((letter["partition"], mapped))
            continue
        if mapped is None:
            reason = "the source row no longer exists"
        elif isinstance(mapped, Filtered):
            reason = "the mapping's filter now excludes this row"
        else:
            reason = mapped.reason
        dead = DeadLetter(letter["event_id"], letter["source_key"], reason, {})
        outcome.still_dead.append((letter["partition"], dead))
    return to_send


def _send(dest: Destination, sender: Sender, to_send: list[Replayed], outcome: _Outcome) -> None:
    size = dest.events_per_request
    for start in range(0, len(to_send), size):
        part = to_send[start : start + size]
        payloads = [dest.vendor.encode(e) for _, e in part]
        result = sender.send([encode_json(p) for p in payloads])
        for i in result.delivered:
            outcome.delivered.append((part[i][0], part[i][1].event_id))
        for i, status, message in result.dead:
            partition, event = part[i]
            reason = f"rejected by vendor: {message}"
            dead = DeadLetter(
                event.event_id, event.source_key, reason, payloads[i], status, message
            )
            outcome.still_dead.append((partition, dead))
