"""Loading a pipeline file: YAML, ``${VAR}`` expansion, the models' validation, the vendors' checks.

Every error names the file and the key. Values may reference the environment as ``${VAR}`` or
``${VAR:-default}``; credentials are left as references and read by :func:`resolve_credentials`
only when a run starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from etl.config import DestinationConfig, PipelineConfig, credential_variable
from etl.errors import ConfigError
from etl.vendors import VENDORS

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Loader(yaml.SafeLoader):
    """YAML without its own dates: a date is text until the models read it, so that an
    impossible one (2024-13-01) is an error that names its key, not a crash of the parser."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file; raise ConfigError naming the file and the key."""
    file = Path(path)
    try:
        raw = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader)  # a SafeLoader
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the pipeline file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the pipeline file must be a mapping of keys")
    return pipeline_from_mapping(raw, file)


def pipeline_from_mapping(raw: dict[str, Any], file: Path, where: str = "") -> PipelineConfig:
    """A pipeline from its keys as read from ``file`` (under ``where``, e.g. a component's
    ``attributes``), checked as a pipeline file is; relative paths are read from ``file``'s
    folder."""
    prefix = f"{where}." if where else ""
    expanded = _expand(raw, where, file)
    try:
        config = PipelineConfig.model_validate({**expanded, "path": file})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(file, exc, prefix)) from None
    for name, dest in config.destinations.items():
        for problem in check_destination(dest):
            raise ConfigError(f"{file}: {prefix}destinations.{name}.{problem}")
    return config


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


def resolve_credentials(name: str, dest: DestinationConfig) -> dict[str, str]:
    """Read a destination's credentials from the environment, and check them; called when a
    run starts."""
    resolved = {}
    for key, ref in dest.credentials.items():
        var = credential_variable(ref)  # validated on load
        value = os.environ.get(var)
        if not value:
            raise ConfigError(
                f"destination {name!r}: environment variable {var} "
                f"(credentials.{key}) is not set or empty"
            )
        resolved[key] = value
    check_credentials(name, dest, resolved)
    return resolved


def check_credentials(name: str, dest: DestinationConfig, values: dict[str, str]) -> None:
    """Refuse, before any request, a credential that no vendor would take as it is: a value
    with surrounding whitespace, a line break or another control character (a secret created
    from a file often ends with a newline). The message names the variable, never the value."""
    for key, value in values.items():
        problem = credential_problem(value)
        if problem is not None:
            ref = dest.credentials.get(key)
            where = f"environment variable {credential_variable(ref)} " if ref else ""
            raise ConfigError(
                f"destination {name!r}: {where}(credentials.{key}) {problem}; nothing was sent"
            )


def credential_problem(value: str) -> str | None:
    """What is wrong with a credential's value, without repeating it; None if nothing."""
    if not value:
        return "is empty"
    for end, where in ((value[-1], "ends"), (value[0], "starts")):
        if end in "\r\n":
            return f"{where} with a line break: remove it (a secret made from a file often has one)"
        if end.isspace():
            return f"{where} with whitespace: remove it"
    for position, char in enumerate(value, 1):
        if char in "\r\n":
            return f"holds a line break (character {position})"
        if not char.isprintable() or not char.isascii():
            what = "a control character" if not char.isprintable() else "a non-ASCII character"
            return f"holds {what} (character {position}): no HTTP header can carry it as it is"
    return None


def _expand(value: Any, where: str, file: Path) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string except credentials."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            sub = f"{where}.{key}" if where else str(key)
            out[key] = item if key == "credentials" else _expand(item, sub, file)
        return out
    if isinstance(value, list):
        return [_expand(item, f"{where}[{i}]", file) for i, item in enumerate(value)]
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is not None:
                return found
            if default is not None:
                return default
            raise ConfigError(f"{file}: {where}: environment variable {name} is not set")

        return _ENV_REF.sub(repl, value)
    return value


def _format_validation_error(file: Path, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{file}: {prefix}{loc}: {err['msg']}")
    return "\n".join(lines)
