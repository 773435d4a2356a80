"""The pipeline file's typed models, each key declared once with its rules.

Reading and checking a file is :mod:`etl.loader`'s job. Credentials are kept here as references
(``${VAR}``) and nothing else; they are resolved only when a run starts
(:func:`etl.loader.resolve_credentials`), so a secret is never stored in the config object.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from etl.database import single_process_only
from etl.errors import ConfigError

_SECRET_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def credential_variable(ref: str) -> str:
    """The environment variable a credential reference (``${VAR}``) names."""
    match = _SECRET_REF.match(ref)
    if match is None:
        raise ValueError(f"not an environment reference: {ref!r}")
    return match.group(1)


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SHARED_MARGIN = 0.02  # rate_limit.margin's default for a budget shared by processes
# rate_limit.jitter_ms's defaults: 2 ms, and 1 ms more for each request in flight beyond the
# first (max_in_flight), each a thread that competes for the interpreter as the others leave.
# Measured against 1-second windows while a million rows were mapped: 2 requests in flight,
# no refusal with 2 ms; 4, 1-2 refused with 2 ms, none with 5; 12, 3-5 of 3,000 refused with
# 2 ms and 0-2 with 5. A strict limit spaces its requests one by one, whose gaps on loopback
# were within 1 ms of the interval for 99 % of them: 2 ms, and no refusal in any run.
JITTER_MS = 2.0
JITTER_MS_PER_REQUEST = 1.0


class RateLimit(_Model):
    """At most ``requests`` per ``per_seconds``, evenly paced; ``burst`` requests may go at once.

    The sender paces so that ``requests + 1`` requests always span the window plus
    ``jitter_ms`` (or ``margin``, a share of the window, if that is more) as they leave: the
    jitter between leaving and arriving then never packs more than the limit into one of the
    vendor's windows, whether it counts them in a sliding window, a fixed one or a bucket. An
    absolute slack costs a long window nothing (10 requests a minute: 0.005 %) and a short one
    little (5 requests a second, 2 in flight: 0.3 %), where a share of the window cost both 2 %.
    A budget ``shared`` by processes keeps a share (2 % unless ``margin`` says otherwise): the
    guard that holds a request back after a late one sees its own process's requests only.
    """

    requests: int = Field(gt=0)
    per_seconds: float = Field(gt=0)
    burst: int = Field(default=1, gt=0)
    margin: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="extra slack, as a share of the window (default 0; 0.02 when shared)",
    )
    jitter_ms: float | None = Field(
        default=None,
        ge=0,
        description="slack for the jitter between a request leaving and arriving, added to "
        "each window, and when strict to each interval (default 2 ms, and 1 ms for each "
        "request in flight beyond the first unless strict)",
    )
    strict: bool = Field(
        default=False,
        description="the vendor's bucket banks nothing: space requests as they really leave",
    )
    shared: bool = Field(
        default=False, description="one budget for every process sending here (state database)"
    )

    def for_requests_in_flight(self, in_flight: int) -> RateLimit:
        """This limit with ``jitter_ms`` set, for a destination that sends ``in_flight``
        requests at once: as given, or its default."""
        if self.jitter_ms is not None:
            return self
        extra = 0 if self.strict else JITTER_MS_PER_REQUEST * (in_flight - 1)
        return self.model_copy(update={"jitter_ms": JITTER_MS + extra})

    @property
    def jitter(self) -> float:
        """The slack for jitter, in seconds: ``jitter_ms``, or its default for one request in
        flight (see for_requests_in_flight)."""
        return (JITTER_MS if self.jitter_ms is None else self.jitter_ms) / 1000

    @property
    def share(self) -> float:
        """The slack as a share of the window: ``margin``, or its default."""
        if self.margin is not None:
            return self.margin
        return SHARED_MARGIN if self.shared else 0.0

    @property
    def window(self) -> float:
        """The seconds that ``requests`` requests are spread over: the vendor's window with
        its slack, the jitter or the share (paced at ``1 - margin`` of the limit), the larger."""
        return max(self.per_seconds / (1 - self.share), self.per_seconds + self.jitter)

    @property
    def per_second(self) -> float:
        return self.requests / self.window

    @property
    def guard_window(self) -> tuple[int, float]:
        """No more than ``requests`` leave in this many seconds, measured when they leave (see
        etl.ratelimit)."""
        return self.requests, self.window

    @property
    def spacing(self) -> float:
        """For a strict vendor (a token bucket that banks nothing), the seconds between two
        requests as they really leave: the interval with its margin, plus the jitter. 0
        otherwise."""
        if not self.strict:
            return 0.0
        return self.per_seconds / self.requests / (1 - self.share) + self.jitter


class ArgSpec(_Model):
    """One typed event parameter taken from a column."""

    column: str
    type: Literal["string", "number", "integer", "boolean"] = "string"
    required: bool = True


class UserSpec(_Model):
    """Where the user identifier comes from, and its kind (a constant or a column)."""

    column: str
    type: str | None = None
    type_column: str | None = None

    @model_validator(mode="after")
    def _one_type(self) -> UserSpec:
        if self.type is not None and self.type_column is not None:
            raise ValueError("give either 'type' or 'type_column', not both")
        return self


class EventNameFromColumn(_Model):
    """The event name is a column's value, optionally renamed (others pass unchanged)."""

    column: str
    rename: dict[str, str] = Field(default_factory=dict)
    lowercase: bool = Field(default=False, description="lowercase the name after renaming")


class MappingConfig(_Model):
    """How one source row becomes one event for a destination."""

    filter: dict[str, list[Scalar]] = Field(
        default_factory=dict,
        description="column -> allowed values; a row that fails any of them is filtered",
    )
    event_name: str | EventNameFromColumn
    user: UserSpec
    args: dict[str, ArgSpec] = Field(
        default_factory=dict, description="typed event parameters (Fuul args, Torque data, ...)"
    )
    fields: dict[str, ArgSpec] = Field(
        default_factory=dict, description="the vendor's own top-level fields (Airship value, ...)"
    )
    properties_column: str | None = Field(
        default=None, description="a JSON object column expanded into the event's properties"
    )

    def columns(self) -> set[str]:
        """Every source column this mapping reads."""
        specs = [*self.args.values(), *self.fields.values()]
        cols = set(self.filter) | {self.user.column} | {a.column for a in specs}
        if self.user.type_column:
            cols.add(self.user.type_column)
        if self.properties_column:
            cols.add(self.properties_column)
        if isinstance(self.event_name, EventNameFromColumn):
            cols.add(self.event_name.column)
        return cols


class DestinationConfig(_Model):
    """One vendor endpoint with its credentials, limits and mapping."""

    vendor: str
    base_url: str | None = Field(default=None, description="default: the vendor's public API")
    credentials: dict[str, str]
    mapping: MappingConfig
    options: dict[str, Any] = Field(default_factory=dict)
    batch_size: int | None = Field(default=None, gt=0)
    rate_limit: RateLimit | None = None
    max_in_flight: int = Field(default=2, gt=0, le=64)
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=8, gt=0)
    enabled: bool = True

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("credentials")
    @classmethod
    def _env_refs_only(cls, value: dict[str, str]) -> dict[str, str]:
        for key, ref in value.items():
            if not _SECRET_REF.match(ref):
                raise ValueError(
                    f"credential {key!r} must be an environment reference like "
                    f"'${{MY_API_KEY}}'; literal keys are not allowed in the pipeline file"
                )
        return value


class SourceConfig(_Model):
    """The actions table (or query) in the warehouse."""

    url: str
    table: str | None = None
    schema_name: str | None = Field(default=None, alias="schema")
    query: str | None = Field(default=None, description="path of a .sql file, relative to the file")
    key_column: str = "id"
    timestamp_column: str = "occurred_at"
    timestamp_type: Literal["datetime", "text", "epoch_s", "epoch_ms"] = "datetime"
    timezone: str = "UTC"
    chunk_size: int = Field(default=5000, gt=0)
    reader_process: bool | Literal["auto"] = Field(
        default="auto",
        description="read in a second process; auto: runs of 50,000+ rows whose rate limit "
        "passes 20,000 events/s, on 2+ cores",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _table_or_query(self) -> SourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' or 'query'")
        return self

    @model_validator(mode="after")
    def _reader_can_open(self) -> SourceConfig:
        problem = single_process_only(self.url)
        if self.reader_process is True and problem:
            raise ValueError(f"reader_process: true, but {problem}: set it to false or auto")
        return self


class StateConfig(_Model):
    """Where checkpoints, the batch ledger and dead letters are written (default: the source DB)."""

    url: str | None = None
    schema_name: str | None = Field(default=None, alias="schema")
    table_prefix: str = "etl_"
    delivery_log_retention_days: int | None = Field(
        default=None,
        gt=0,
        description="forget the per-row delivery log recorded more than this many days ago "
        "(default: keep it); late rows of the days it covered are then no longer sent",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("table_prefix")
    @classmethod
    def _safe_prefix(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_]*$", value):
            raise ValueError("may hold only letters, digits and '_'")
        return value


class LateRows(_Model):
    """Rows added to a day after it was sent: which complete days a run looks at again."""

    lookback_days: int = Field(
        default=7,
        ge=0,
        description="every run re-checks the complete days this far before its range",
    )


class DagsterSettings(_Model):
    """How the Dagster project runs this pipeline (read by dagster_project, not by the library)."""

    partitions_per_run: int = Field(default=10, gt=0, description="BackfillPolicy.multi_run")
    dead_letter_warn_rate: float = Field(default=0.05, ge=0, le=1)
    schedule_hour: int = Field(default=2, ge=0, le=23, description="UTC hour of the daily run")
    schedule_running: bool = Field(default=False, description="start the daily schedule on")
    fresh_by_hour: int | None = Field(
        default=6, ge=0, le=23, description="UTC hour by which yesterday is sent (None: no check)"
    )
    progress_every_batches: int = Field(default=20, ge=0, description="a progress line per N")
    alert_webhook_env: str = Field(
        default="ETL_ALERT_WEBHOOK_URL",
        description="environment variable holding a Slack-compatible webhook for failed runs",
    )
    owners: list[str] = Field(default_factory=list, description="emails or team:<name>")
    tags: dict[str, str] = Field(default_factory=dict, description="tags on every asset")

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: list[str]) -> list[str]:
        for owner in value:
            if not re.match(r"^(team:[\w-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$", owner):
                raise ValueError(f"owner {owner!r} must be an email or team:<name>")
        return value


class PipelineConfig(_Model):
    """The whole pipeline file."""

    start_date: date
    source: SourceConfig
    state: StateConfig = Field(default_factory=StateConfig)
    late_rows: LateRows = Field(default_factory=LateRows)
    destinations: dict[str, DestinationConfig]
    dagster: DagsterSettings = Field(default_factory=DagsterSettings)
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("destinations")
    @classmethod
    def _names(cls, value: dict[str, DestinationConfig]) -> dict[str, DestinationConfig]:
        if not value:
            raise ValueError("at least one destination is needed")
        for name in value:
            if not _NAME.match(name):
                raise ValueError(
                    f"destination name {name!r} must be lowercase letters, digits and '_'"
                )
        return value

    def destination_names(self, names: list[str] | None = None) -> list[str]:
        """The destinations asked for by name, checked; by default every enabled one."""
        if not names:
            return [n for n, d in self.destinations.items() if d.enabled]
        unknown = [n for n in names if n not in self.destinations]
        if unknown:
            raise ConfigError(
                f"unknown destination(s) {', '.join(unknown)}; the pipeline file has "
                f"{', '.join(self.destinations)}"
            )
        return names

    @property
    def state_url(self) -> str:
        return self.state.url or self.source.url

    def query_text(self) -> str | None:
        """The source query's SQL, read from its file (relative to the pipeline file)."""
        if self.source.query is None:
            return None
        base = self.path.parent if self.path else Path.cwd()
        query_path = (base / self.source.query).resolve()
        try:
            return query_path.read_text(encoding="utf-8").strip().rstrip(";")
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: source.query: cannot read {query_path}: {exc}"
            ) from exc
