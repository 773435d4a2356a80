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
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from etl.database import single_process_only
from etl.errors import ConfigError
from etl.limits import RateLimit as RateLimit  # declared apart; read here as a key of the file

_SECRET_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def credential_variable(ref: str) -> str:
    """The environment variable a credential reference (``${VAR}``) names."""
    match = _SECRET_REF.match(ref)
    if match is None:
        raise ValueError(f"not an environment reference: {ref!r}")
    return match.group(1)


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def url_problem(url: str) -> str | None:
    """Why a request to ``url`` could not even be built, or None."""
    import requests  # here: loading a pipeline file should not cost its import

    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not hold spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port out of range)
        requests.Request("POST", url).prepare()
    except (ValueError, requests.RequestException) as exc:
        return f"is not a valid URL ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    return None


Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}, got {value!r}")
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
    lease_seconds: float = Field(
        default=60.0,
        ge=5,
        description="a run renews its partitions' leases every third of this; the lease of a "
        "run that was killed (or whose host went down) passes this long after its last renewal",
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

    partitions_per_run: int = Field(default=30, gt=0, description="BackfillPolicy.multi_run")
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
