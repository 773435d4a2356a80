"""A destination resolved once: its vendor, URL, limits, batch shape and mapping, in one object.

The pipeline file says what the user chose (``max_in_flight``, ``batch_size``, ``rate_limit``) and
the vendor what it allows; :class:`Destination` holds the result, and the sender, the runner, the
planner and the partition engine read it instead of working it out again. In parameters a
resolved destination is called ``target``; ``destination`` is always a destination's name (the
state tables' column).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from etl.batching import Batcher
from etl.config import DestinationConfig, PipelineConfig, RateLimit, SourceConfig
from etl.errors import ConfigError
from etl.fingerprint import Settings, event_settings, fingerprint_of, legacy_fingerprint
from etl.mapping import Mapper
from etl.prepare import Preparer
from etl.vendors import vendor_class
from etl.vendors.base import Endpoint, Vendor


@dataclass(frozen=True)
class Destination:
    """Everything fixed about one destination for the length of a run (no credentials)."""

    name: str
    config: DestinationConfig
    vendor: Vendor
    base_url: str
    endpoint: Endpoint
    rate: RateLimit  # the destination's rate_limit, else the vendor's published one
    events_per_request: int  # and so per batch: a batch is one request
    requests_in_flight: int  # requests (batches) sent at once: max_in_flight
    mapper: Mapper
    settings: Settings  # what makes its events: setting -> hash (see etl.fingerprint)
    fingerprint: str  # one hash of them (a checkpoint's fingerprint)
    legacy_fingerprint: str  # the fingerprint earlier versions recorded

    @classmethod
    def resolve(
        cls,
        name: str,
        config: DestinationConfig,
        source: SourceConfig,
        several_hosts: bool = False,
    ) -> Destination:
        """``several_hosts``: runs start on several hosts, so the rate limit is one budget in
        the state database unless ``rate_limit.shared`` says otherwise, which is refused."""
        vendor = vendor_class(config.vendor).from_config(config)
        settings = event_settings(source, config)
        endpoint = vendor.endpoint()
        per_request = min(config.batch_size or endpoint.max_events, endpoint.max_events)
        return cls(
            name=name,
            config=config,
            vendor=vendor,
            base_url=config.base_url or vendor.default_base_url(),
            endpoint=endpoint,
            rate=_rate(
                name, config.rate_limit or endpoint.rate_limit, several_hosts
            ).for_requests_in_flight(config.max_in_flight),
            events_per_request=per_request,
            requests_in_flight=config.max_in_flight,
            mapper=Mapper(name, config, source, vendor),
            settings=settings,
            fingerprint=fingerprint_of(settings),
            legacy_fingerprint=legacy_fingerprint(source, config),
        )

    @property
    def made_with(self) -> tuple[str, str]:
        """What a checkpoint records of the settings its events are made with."""
        return self.fingerprint, json.dumps(self.settings, sort_keys=True)

    @property
    def url(self) -> str:
        """Where the requests go."""
        return self.base_url + self.endpoint.path

    @property
    def deduplicates(self) -> bool:
        """The vendor drops an event it already has: a resend is harmless."""
        return self.vendor.deduplicates

    @property
    def ceiling(self) -> float:
        """The most events a second the rate limit lets through."""
        return self.rate.per_second * self.events_per_request

    @property
    def paced(self) -> bool:
        """The rate limit binds (under 1,000 requests a second): requests must leave on time."""
        return self.rate.per_second < 1000

    @property
    def credential_hint(self) -> str:
        """Where the user finds the credential to check (never the credential itself)."""
        refs = ", ".join(self.config.credentials.values())
        return f"the key in {refs} (destinations.{self.name}.credentials)"

    def batcher(self, batch_prefix: str = "") -> Batcher:
        """A batcher that cuts this destination's batches (ids ``<batch_prefix><n>``)."""
        return Batcher(self.events_per_request, self.endpoint.max_bytes, batch_prefix=batch_prefix)

    def preparer(self) -> Preparer:
        """What maps and encodes this destination's rows."""
        return Preparer(self.mapper, self.vendor, self.endpoint.max_bytes)


def resolve_destination(
    config: PipelineConfig, name: str, several_hosts: bool = False
) -> Destination:
    """The destination ``name`` of a pipeline, resolved."""
    return Destination.resolve(name, config.destinations[name], config.source, several_hosts)


def _rate(name: str, rate: RateLimit, several_hosts: bool) -> RateLimit:
    if not several_hosts or rate.shared:
        return rate
    if rate.shared is False:
        raise ConfigError(
            f"destinations.{name}.rate_limit.shared: false, but this run is one of several hosts'"
            ": each would send at the whole limit. Remove the key (it is on by default there)"
        )
    return rate.model_copy(update={"shared": True})
