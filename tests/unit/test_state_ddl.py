from pathlib import Path

from etl.state import decode_position, encode_position, generate_ddl

SQL = Path(__file__).parents[2] / "sql" / "state_tables.sql"


def test_sql_folder_matches_the_code():
    assert SQL.read_text() == generate_ddl("postgresql"), (
        "run: etl state-ddl > sql/state_tables.sql"
    )


def test_cursor_round_trip_keeps_types():
    from datetime import UTC, date, datetime
    from decimal import Decimal
    from uuid import UUID

    for position in [
        (datetime(2024, 1, 2, 3, 4, 5, 6), 42),
        (datetime(2024, 1, 2, tzinfo=UTC), "k-1"),
        ("2024-01-02 03:04:05", 7),
        (1704164645123, Decimal("12.5")),
        (date(2024, 1, 2), 1),
        (datetime(2024, 1, 2), UUID("12345678-1234-5678-1234-567812345678")),
    ]:
        assert decode_position(encode_position(position)) == position
    assert decode_position(None) is None
