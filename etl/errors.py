"""Errors, sorted by what the caller must do. Every error the tool raises derives from EtlError."""

from __future__ import annotations


class EtlError(Exception):
    """Root of every error this tool raises on purpose; the CLI prints it as one line."""


class ConfigError(EtlError):
    """The pipeline file or the environment is wrong: stop before anything is sent."""


class SourceError(EtlError):
    """The warehouse does not have what the pipeline file names."""


class MappingChangedError(EtlError):
    """A partition that is partly sent would be continued with a different mapping."""


class AccountingError(EtlError):
    """rows read != delivered + dead letters + filtered for a partition."""


class DeliveryError(EtlError):
    """A destination could not deliver; the run of that destination stops."""


class FatalDeliveryError(DeliveryError):
    """The vendor refused the credential (401/403): nothing will get through until it is fixed."""


class RetriesExhaustedError(DeliveryError):
    """A retryable failure (429, 5xx, timeout) persisted past the retry budget."""


class EndpointError(DeliveryError):
    """The URL answers, but not as the vendor's API (404, 405, 410, a proxy's 413, a redirect):
    every request would fail alike, so the destination stops instead of dead-lettering rows."""


class UnknownAnswerError(DeliveryError):
    """Answers that are not the vendor's documented success nor a documented error, again and
    again (an HTML page, an empty body): nothing says the events were stored."""


class RequestNotBuiltError(ConfigError, DeliveryError):
    """A request could not even be built from the settings (a key that is not a valid header
    value, a malformed URL): it never left, counts nothing, and the destination stops.
    ``nothing_left``: no request of its batch left either (the batch is not sent)."""

    def __init__(self, message: str, nothing_left: bool) -> None:
        super().__init__(message)
        self.nothing_left = nothing_left


class LeaseHeldError(EtlError):
    """Another run is sending this destination's partition now."""


class StateDatabaseError(EtlError):
    """The state database refuses to record progress (read-only, full, locked)."""


class ReadOnlyDatabaseError(StateDatabaseError):
    """A SQLite file that can no longer be written under a running process."""
