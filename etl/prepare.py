"""Rows made ready to send: mapped, encoded as the vendor's payloads, one list per attribute.

A :class:`Preparer` is the CPU-heavy half of a run (the other is sending): it runs where the
rows are read, in the run's process or in its reader process (etl.reader), and hands
:class:`~etl.events.Rows` to the batcher.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from typing import Any

from etl.events import (
    EVENT,
    FILTERED,
    REJECTED,
    DeadLetter,
    Event,
    Filtered,
    NearMiss,
    Rejected,
    RowOutcome,
    Rows,
    event_id_for,
)
from etl.mapping import Mapper
from etl.source import Chunks
from etl.vendors.base import Vendor, encode_json

MAP_SLICE = 1000  # rows mapped and encoded together

RowChunks = Generator[Rows, None, None]


class Preparer:
    """Maps and encodes rows for one destination."""

    def __init__(self, mapper: Mapper, vendor: Vendor, max_bytes: int | None) -> None:
        self.mapper = mapper
        self.vendor = vendor
        self.max_bytes = max_bytes

    def prepare(self, names: list[str], rows: Sequence[Sequence[Any]]) -> Rows:
        """A chunk of rows as ``Source.read_tuples`` gives them."""
        return self.outcomes(self.mapper.map_chunk(names, rows))

    def outcomes(self, outcomes: list[RowOutcome]) -> Rows:
        """Mapped rows, encoded."""
        return encode_outcomes(self.mapper.destination, self.vendor, self.max_bytes, outcomes)


def encode_outcomes(
    destination: str, vendor: Vendor, max_bytes: int | None, outcomes: list[RowOutcome]
) -> Rows:
    """Mapped rows with their events encoded. An event whose payload alone is over the
    request's byte limit is a dead letter here: no request could carry it."""
    events = [o for o in outcomes if type(o) is Event]
    bodies = [encode_json(p) for p in vendor.encode_many(events)]
    fits = max_bytes is None or max(map(len, bodies), default=0) + 2 <= max_bytes
    if len(events) == len(outcomes) and fits:  # the common case, a list at a time
        return Rows(
            bytes([EVENT]) * len(events),
            [e.source_key for e in events],
            [e.position for e in events],
            bodies,
            [e.user_id for e in events],
        )
    n = len(outcomes)
    kinds = bytearray(n)
    keys: list[str] = [""] * n
    positions: list[Any] = [None] * n
    encoded: list[bytes] = [b""] * n
    users: list[str] = [""] * n
    rejected: dict[int, DeadLetter] = {}
    near: dict[int, NearMiss] = {}
    next_body = iter(bodies)
    for i, outcome in enumerate(outcomes):
        keys[i], positions[i] = outcome.source_key, outcome.position
        if type(outcome) is Event:
            body = next(next_body)
            if max_bytes is not None and len(body) + 2 > max_bytes:  # "[" + it + "]"
                reason = (
                    f"event is {len(body)} bytes, over {vendor.name}'s request limit of "
                    f"{max_bytes} bytes"
                )
                event_id = event_id_for(destination, outcome.source_key)
                letter = DeadLetter(event_id, outcome.source_key, reason, json.loads(body))
                kinds[i], rejected[i] = REJECTED, letter
                continue
            kinds[i], encoded[i], users[i] = EVENT, body, outcome.user_id
        elif isinstance(outcome, Filtered):
            kinds[i] = FILTERED
            if outcome.near_miss is not None:
                near[i] = outcome.near_miss
        else:
            assert isinstance(outcome, Rejected)
            kinds[i] = REJECTED
            rejected[i] = DeadLetter(
                outcome.event_id, outcome.source_key, outcome.reason, outcome.row
            )
    return Rows(bytes(kinds), keys, positions, encoded, users, rejected, near)


def prepared(chunks: Chunks, preparer: Preparer) -> RowChunks:
    """The chunks' rows prepared, ``MAP_SLICE`` at a time; closing this closes ``chunks``."""
    try:
        for names, rows in chunks:
            for start in range(0, len(rows), MAP_SLICE):
                yield preparer.prepare(names, rows[start : start + MAP_SLICE])
    finally:
        chunks.close()
