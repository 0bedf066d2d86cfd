"""One settings object for the whole service.

Sources, later wins: defaults → the YAML file named by ``CDS_CONFIG_FILE`` (if any) →
environment variables ``CDS_*`` (nested with ``__``, e.g. ``CDS_FHIR__TIMEOUT_SECONDS=3``).
Every field is documented in README.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cds.api.auth import AuthSettings


class FhirSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_seconds: float = 4.0
    """Deadline for all FHIR fetches of one hook call together."""
    max_pages: int = 10
    """Searchset ``next`` links followed per prefetch key at most."""
    allowed_servers: list[str] = ["*"]
    """URL prefixes of fhirServer values we may call WITH the client's access token."""
    open_servers: list[str] = []
    """URL prefixes of fhirServer values we may call WITHOUT a token (Sandbox open mode)."""
    max_connections: int = 50


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["sqlite"] = "sqlite"
    path: Path = Path("var/cds-audit.sqlite")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CDS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    public_base_url: str | None = None
    """Externally visible base URL (scheme://host[:port][/prefix]); JWT ``aud`` is checked against
    it. When unset, the URL the request arrived on is used (fine without a proxy)."""
    hooks_dir: Path = Path("hooks")
    rules_dir: Path = Path("rules")
    knowledge_dir: Path = Path("knowledge")
    default_locale: Literal["nb", "en"] = "nb"
    auth: AuthSettings = AuthSettings()
    fhir: FhirSettings = FhirSettings()
    audit: AuditSettings = AuditSettings()
    cors_origins: list[str] = ["*"]
    log_level: str = "INFO"
    admin_token_sha256: str | None = None
    """SHA-256 (hex) of the bearer token accepted by the admin endpoints (reload). Unset: admin
    endpoints only answer on loopback clients."""
    allow_now_override: bool = False
    """Test/QA only: honour the request extension ``org.cdsrules.now``."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))


class _YamlFileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("CDS_CONFIG_FILE")
        if not path:
            return {}
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: settings file must be a mapping")
        return data


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def dump_public(settings: Settings) -> dict[str, Any]:
    """Settings for display (no secrets)."""
    d = settings.model_dump(mode="json")
    d.pop("admin_token_sha256", None)
    return d


__all__ = ["Settings", "FhirSettings", "AuditSettings", "load_settings", "dump_public"]
