"""Resources: the warehouse URL and each destination's credentials, read from the environment
at run time through EnvVar, so that no secret is shown in the UI or written to a run log."""

from __future__ import annotations

import dagster as dg
from sqlalchemy.engine import make_url

from dagster_project.names import Names
from etl.config import PipelineConfig, credential_variable
from etl.errors import ConfigError


class WarehouseResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The SQLAlchemy URL of the warehouse (defaults to the pipeline file's source.url)."""

    url: str


class CredentialsResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """A destination's credentials: each one an EnvVar (api_key, or Airship's token and app key)."""

    api_key: str | None = None
    token: str | None = None
    app_key: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("api_key", self.api_key),
                ("token", self.token),
                ("app_key", self.app_key),
            )
            if v
        }


def credentials_key(destination: str) -> str:
    return f"{destination}_credentials"


def build_resources(
    config: PipelineConfig, warehouse_url_env: str | None, names: Names
) -> dict[str, object]:
    """``warehouse`` and one ``<destination>_credentials`` per destination, all fed by EnvVar
    (named by ``names``).

    The warehouse URL comes from $``warehouse_url_env`` when that variable is named (keep a
    password there); otherwise from the pipeline file.
    """
    if warehouse_url_env:
        url: str | dg.EnvVar = dg.EnvVar(warehouse_url_env)
    elif make_url(config.source.url).password:
        raise ConfigError(
            "source.url holds a password, which the Dagster UI would show: put the URL in an "
            "environment variable and name it in ETL_WAREHOUSE_URL_ENV"
        )
    else:
        url = config.source.url
    resources: dict[str, object] = {names.of("warehouse"): WarehouseResource(url=url)}
    for name, dest in config.destinations.items():
        values = {key: dg.EnvVar(credential_variable(ref)) for key, ref in dest.credentials.items()}
        resources[names.of(credentials_key(name))] = CredentialsResource(**values)
    return resources
