"""What a partition's events were made with: a fingerprint of the settings that change an
event's content or identity, and nothing else.

Each such setting is hashed on its own (``settings``: setting -> short hash), so that a
partition continued with a different setting can name the setting; the fingerprint is the hash
of them all. Transport settings (a vendor's host, path, auth header, endpoint) are left out:
switching them half-way through a partition goes on where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from etl.config import DestinationConfig, SourceConfig
from etl.vendors import vendor_class

Settings = dict[str, str]  # setting (as written in the pipeline file) -> short hash of its value


def _digest(value: Any, length: int) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def event_settings(source: SourceConfig, dest: DestinationConfig) -> Settings:
    """Every setting that decides which rows become which events, with what content."""
    transport = vendor_class(dest.vendor).options_model.transport
    values: dict[str, Any] = {
        "vendor": dest.vendor,
        "source.key_column": source.key_column,
        "source.timestamp_column": source.timestamp_column,
        "source.timestamp_type": source.timestamp_type,
        "source.timezone": source.timezone,
    }
    for key, value in dest.options.items():
        if key not in transport:
            values[f"options.{key}"] = value
    for key, value in dest.mapping.model_dump(mode="json").items():
        if key in ("args", "fields") and isinstance(value, dict):
            for name, spec in value.items():
                values[f"mapping.{key}.{name}"] = spec
        elif value not in (None, {}, []):
            values[f"mapping.{key}"] = value
    return {key: _digest(value, 8) for key, value in values.items()}


def fingerprint_of(settings: Settings) -> str:
    """The one hash of a destination's event settings (the checkpoint's ``fingerprint``)."""
    return _digest(settings, 16)


def legacy_fingerprint(source: SourceConfig, dest: DestinationConfig) -> str:
    """The fingerprint as earlier versions computed it (transport options included), so that
    their partitions go on after an upgrade when nothing changed."""
    basis = {
        "vendor": dest.vendor,
        "options": dest.options,
        "mapping": dest.mapping.model_dump(mode="json"),
        "source": [source.key_column, source.timestamp_column, source.timestamp_type],
        "timezone": source.timezone,
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def changed_settings(
    stored: str, stored_settings: str | None, now: tuple[str, Settings], legacy: str = ""
) -> list[str]:
    """The settings that changed since a partition's events were made (none: go on); ``now``:
    today's fingerprint and settings. A checkpoint of an earlier version kept only a
    fingerprint: all it can say is 'the mapping'."""
    fingerprint, settings = now
    if stored == fingerprint:
        return []
    if stored_settings:
        before: Settings = json.loads(stored_settings)
        keys = sorted(set(before) | set(settings))
        return [k for k in keys if before.get(k) != settings.get(k)] or ["the mapping"]
    if stored == legacy:
        return []
    return ["the mapping (recorded by an earlier version, which kept no detail)"]
