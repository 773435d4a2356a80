"""How one pipeline's definitions are named: as they always were for the project's own code
location, or under an instance's name when several pipelines (component instances) share one
Dagster project, so that nothing of one collides with another."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class Names:
    """``instance``: empty for the project's own definitions; else the component instance's
    name, which prefixes asset keys (``<instance>/<destination>``) and every other name
    (``<instance>__send_daily``, pools, resource keys, sensors)."""

    instance: str = ""

    def key(self, name: str) -> dg.AssetKey:
        """An asset's key."""
        return dg.AssetKey([self.instance, name]) if self.instance else dg.AssetKey(name)

    def of(self, name: str) -> str:
        """A job's, schedule's, sensor's, pool's or resource's name."""
        return f"{self.instance}__{name}" if self.instance else name

    def destination_of(self, key: dg.AssetKey) -> str | None:
        """The destination an asset key of these definitions names, or None."""
        path = key.path
        if self.instance:
            return path[1] if len(path) == 2 and path[0] == self.instance else None
        return path[0] if len(path) == 1 else None
