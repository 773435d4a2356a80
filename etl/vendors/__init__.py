"""The vendor registry: one place that maps a pipeline file's ``vendor:`` to its class."""

from __future__ import annotations

from pydantic import ValidationError

from etl.config import DestinationConfig
from etl.vendors.airship import Airship
from etl.vendors.base import Vendor
from etl.vendors.fuul import Fuul
from etl.vendors.thrivestack import ThriveStack
from etl.vendors.torque import Torque

VENDORS: dict[str, type[Vendor]] = {cls.name: cls for cls in (Fuul, Torque, ThriveStack, Airship)}


def vendor_class(name: str) -> type[Vendor]:
    try:
        return VENDORS[name]
    except KeyError:
        raise KeyError(f"unknown vendor {name!r}; known: {', '.join(sorted(VENDORS))}") from None


def check_destination(dest: DestinationConfig) -> list[str]:
    """Problems of a destination that only its vendor knows, as 'key: message' lines."""
    if dest.vendor not in VENDORS:
        return [f"vendor: unknown vendor {dest.vendor!r}; known: {', '.join(sorted(VENDORS))}"]
    cls = VENDORS[dest.vendor]
    problems: list[str] = []
    try:
        vendor = cls.from_config(dest)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"options.{loc}: {err['msg']}")
        return problems
    missing = [k for k in cls.credential_keys if k not in dest.credentials]
    if missing:
        problems.append(f"credentials: {dest.vendor} needs {', '.join(missing)}")
    unknown = sorted(set(dest.credentials) - set(cls.credential_keys))
    if unknown:
        problems.append(f"credentials: unknown key(s) {', '.join(unknown)} for {dest.vendor}")
    limit = vendor.endpoint().max_events
    if dest.batch_size is not None and dest.batch_size > limit:
        problems.append(f"batch_size: {dest.batch_size} is over {dest.vendor}'s limit of {limit}")
    problems.extend(cls.check_mapping(dest.mapping))
    return problems


__all__ = ["VENDORS", "Vendor", "check_destination", "vendor_class"]
