"""Secrets the site config names by environment variable, never by value: a config file is
shared, copied and printed, and a password in it leaks with it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote

from core.config import SiteConfig
from core.errors import ConfigError, ConfigIssue

__all__ = ["from_environment", "mqtt_password", "postgres_dsn"]


def from_environment(variable: str, field: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of ``variable``; a missing one is a configuration error naming the field that
    asked for it, reported before anything starts."""
    value = (os.environ if environ is None else environ).get(variable)
    if value is None:
        issue = ConfigIssue(
            file="(environment)",
            line=None,
            column=None,
            field=field,
            message=f"environment variable {variable} is not set",
        )
        raise ConfigError([issue])
    return value


def postgres_dsn(site: SiteConfig, environ: Mapping[str, str] | None = None) -> str:
    """The configured DSN with the password from its environment variable, if one is named."""
    settings = site.store.postgresql
    if settings is None:
        raise ValueError("the site has no PostgreSQL settings")
    if settings.password_env is None:
        return settings.dsn
    password = from_environment(settings.password_env, "store.postgresql.password_env", environ)
    scheme, rest = settings.dsn.split("://", 1)
    user, at, host = rest.partition("@")
    if not at:
        issue = ConfigIssue(
            file="(config)",
            line=None,
            column=None,
            field="store.postgresql.dsn",
            message="a password needs a user name: postgresql://user@host/database",
        )
        raise ConfigError([issue])
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}"


def mqtt_password(site: SiteConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The broker password: ``mqtt.password_env``'s variable, else ``mqtt.password``."""
    if site.mqtt.password_env is not None:
        return from_environment(site.mqtt.password_env, "mqtt.password_env", environ)
    return site.mqtt.password
