import textwrap

import pytest

from etl.errors import ConfigError
from etl.loader import load_pipeline, resolve_credentials

VALID = """
start_date: 2024-01-01
source:
  url: ${WAREHOUSE_URL:-sqlite:///w.db}
  table: user_actions
destinations:
  fuul_rewards:
    vendor: fuul
    base_url: http://127.0.0.1:8765/fuul/api/v1/
    credentials: {api_key: "${FUUL_TEST_KEY}"}
    mapping:
      event_name: played
      user: {column: wallet, type: evm_address}
"""


def write(tmp_path, text, name="pipeline.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert str(path) in message  # every error names the file
    return message


def test_valid_file_loads_with_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("WAREHOUSE_URL", raising=False)
    config = load_pipeline(write(tmp_path, VALID))
    dest = config.destinations["fuul_rewards"]
    assert config.source.url == "sqlite:///w.db"
    assert config.state_url == "sqlite:///w.db"
    assert dest.base_url == "http://127.0.0.1:8765/fuul/api/v1"
    assert dest.credentials == {"api_key": "${FUUL_TEST_KEY}"}  # never the secret itself
    assert (dest.max_in_flight, config.source.chunk_size, config.state.table_prefix) == (
        2,
        5000,
        "etl_",
    )
    assert config.source.reader_process == "auto"


def test_env_default_is_overridden(tmp_path, monkeypatch):
    monkeypatch.setenv("WAREHOUSE_URL", "postgresql+psycopg://u@h/db")
    assert load_pipeline(write(tmp_path, VALID)).source.url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "table: user_actions",
            "table: user_actions\n  chunk_size: 0",
            "source.chunk_size: Input should be greater than 0",
        ),
        (
            "table: user_actions",
            "table: user_actions\n  timezone: Mars/Olympus",
            "source.timezone: Value error, unknown time zone",
        ),
        (
            "table: user_actions",
            "table: user_actions\n  reader_process: sometimes",
            "source.reader_process",
        ),
        (
            "url: ${WAREHOUSE_URL:-sqlite:///w.db}",
            "url: 'duckdb:///w.duckdb'\n  reader_process: true",
            "source: Value error, reader_process: true, but DuckDB lets one process at a time",
        ),
        (
            "url: ${WAREHOUSE_URL:-sqlite:///w.db}",
            "url: 'sqlite://'\n  reader_process: true",
            "an in-memory SQLite database cannot be read from another process",
        ),
        (
            "table: user_actions",
            "table: user_actions\n  query: q.sql",
            "source: Value error, give exactly one of 'table' or 'query'",
        ),
        (
            "vendor: fuul",
            "vendor: fuul\n    batch_sise: 10",
            "destinations.fuul_rewards.batch_sise: Extra inputs are not permitted",
        ),
        (
            "vendor: fuul",
            "vendor: fuul\n    batch_size: 500",
            "destinations.fuul_rewards.batch_size: 500 is over fuul's limit of 100",
        ),
        ("vendor: fuul", "vendor: fool", "destinations.fuul_rewards.vendor: unknown vendor 'fool'"),
        (
            "vendor: fuul",
            "vendor: fuul\n    options: {endpoint: bulk}",
            "destinations.fuul_rewards.options.endpoint: Input should be 'batch' or 'single'",
        ),
        (
            '"${FUUL_TEST_KEY}"',
            "sk_live_123",
            "credentials: Value error, credential 'api_key' must be an environment reference",
        ),
        (
            '{api_key: "${FUUL_TEST_KEY}"}',
            '{token: "${T}"}',
            "destinations.fuul_rewards.credentials: fuul needs api_key",
        ),
        (
            "type: evm_address",
            "type: bitcoin",
            "destinations.fuul_rewards.mapping.user.type: 'bitcoin' is not a Fuul identifier type",
        ),
        (
            "user: {column: wallet, type: evm_address}",
            "user: {column: wallet}",
            "mapping.user.type: Fuul needs an identifier type",
        ),
        ("fuul_rewards:", "Fuul-Rewards:", "destination name 'Fuul-Rewards' must be lowercase"),
        (
            "base_url: http://127.0.0.1:8765/fuul/api/v1/",
            "base_url: 127.0.0.1:8765",
            "base_url: Value error, must be an http(s) URL",
        ),
    ],
)
def test_errors_name_the_key(tmp_path, monkeypatch, old, new, expected):
    monkeypatch.delenv("WAREHOUSE_URL", raising=False)
    assert old in VALID
    assert expected in error_of(tmp_path, VALID.replace(old, new))


def test_missing_env_var_without_default_names_it(tmp_path):
    text = VALID.replace("${WAREHOUSE_URL:-sqlite:///w.db}", "${NO_SUCH_VAR_XYZ}")
    assert "source.url: environment variable NO_SUCH_VAR_XYZ is not set" in error_of(tmp_path, text)


def test_yaml_and_file_errors(tmp_path):
    assert "not valid YAML" in error_of(tmp_path, "a: [")
    assert "must be a mapping" in error_of(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="cannot read the pipeline file"):
        load_pipeline(tmp_path / "absent.yaml")


def test_credentials_are_read_when_the_run_starts(tmp_path, monkeypatch):
    config = load_pipeline(write(tmp_path, VALID))
    dest = config.destinations["fuul_rewards"]
    monkeypatch.delenv("FUUL_TEST_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        resolve_credentials("fuul_rewards", dest)
    assert "FUUL_TEST_KEY" in str(info.value) and "credentials.api_key" in str(info.value)
    monkeypatch.setenv("FUUL_TEST_KEY", "s3cret")
    assert resolve_credentials("fuul_rewards", dest) == {"api_key": "s3cret"}


def test_query_file_is_relative_to_the_pipeline_file(tmp_path, monkeypatch):
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "actions.sql").write_text("SELECT * FROM t;\n")
    text = VALID.replace("table: user_actions", "query: sql/actions.sql")
    config = load_pipeline(write(tmp_path, text))
    monkeypatch.chdir("/")
    assert config.query_text() == "SELECT * FROM t"
