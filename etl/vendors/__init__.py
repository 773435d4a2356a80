"""The vendor registry: one place that maps a pipeline file's ``vendor:`` to its class."""

from __future__ import annotations

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


__all__ = ["VENDORS", "Vendor", "vendor_class"]
