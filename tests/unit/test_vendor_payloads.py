"""Golden payloads: a table of rows and the exact JSON each vendor must receive."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from etl.config import DestinationConfig, SourceConfig
from etl.events import Event
from etl.mapping import Mapper
from etl.vendors import vendor_class

GOLDEN = Path(__file__).parent / "golden"
SOURCE = SourceConfig(table="t", url="sqlite://", timezone="Europe/Paris")
CREDENTIALS = {"airship": {"token": "${T}", "app_key": "${A}"}}


def cases():
    for vendor in ("torque", "thrivestack", "airship"):
        spec = json.loads((GOLDEN / f"{vendor}.json").read_text())
        for case in spec["cases"]:
            yield pytest.param(vendor, spec, case, id=f"{vendor}: {case['name']}")


@pytest.mark.parametrize(("vendor_name", "spec", "case"), list(cases()))
def test_golden_payload(vendor_name, spec, case):
    dest = DestinationConfig(
        vendor=vendor_name,
        credentials=CREDENTIALS.get(vendor_name, {"api_key": "${K}"}),
        mapping=spec["mapping"],
    )
    cls = vendor_class(vendor_name)
    assert cls.check_mapping(dest.mapping) == []
    now = datetime.fromisoformat(spec["now"]) if "now" in spec else None
    vendor = cls(cls.options_model.model_validate({}), now=(lambda: now) if now else None)
    row = dict(case["row"])
    row["occurred_at"] = datetime.fromisoformat(row["occurred_at"])
    outcome = Mapper("dest", dest, SOURCE, vendor).map_row(row)
    assert isinstance(outcome, Event), outcome
    assert vendor.encode(outcome) == case["payload"]
