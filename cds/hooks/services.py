"""CDS service definitions: YAML files in ``hooks/``, not code.

One file defines one service ``id`` for one or more hooks (the spec allows the same id on
several hooks), its prefetch templates, and which rule packs (pinned versions or ranges) it
evaluates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cds.hooks.models import HOOKS, ServiceDescriptor
from cds.yamlio import Located, Problem, load_model

TOKEN = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
USER_TOKENS = ("userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId")
# Root context fields that are prefetch tokens, per hook (CDS Hooks library 1.0.1).
TOKEN_FIELDS: dict[str, set[str]] = {
    "patient-view": {"userId", "patientId", "encounterId"},
    "order-select": {"userId", "patientId", "encounterId"},
    "order-sign": {"userId", "patientId", "encounterId"},
    "encounter-start": {"userId", "patientId", "encounterId"},
    "encounter-discharge": {"userId", "patientId", "encounterId"},
    "appointment-book": {"userId", "patientId", "encounterId"},
}


class PrefetchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str
    required: bool = True
    """Required data that cannot be had (prefetch or FHIR) answers 412."""


class PackPin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    version: str = ">=0"
    """An exact version (``1.2.0``) or a PEP 440 range (``>=1.0,<2``)."""
    shadow: bool = False
    """Evaluated and audited, never returned."""
    allow_draft: bool = False

    @field_validator("version")
    @classmethod
    def _spec(cls, v: str) -> str:
        spec = v if re.match(r"^\s*[<>=!~]", v) else f"=={v}"
        try:
            SpecifierSet(spec)
        except InvalidSpecifier as e:
            raise ValueError(f"not a version or range: {v!r}") from e
        return v

    @property
    def specifier(self) -> SpecifierSet:
        v = self.version
        return SpecifierSet(v if re.match(r"^\s*[<>=!~]", v) else f"=={v}")


class ServiceDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-_.]{0,63}$")
    hooks: list[Literal[HOOKS]] = Field(min_length=1)  # type: ignore[valid-type]
    title: str | None = None
    description: str = Field(min_length=1)
    usageRequirements: str | None = None
    locale: Literal["nb", "en"] | None = None
    prefetch: dict[str, PrefetchSpec] = {}
    packs: list[PackPin] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _hook_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hook" in data and "hooks" not in data:
            data = dict(data)
            data["hooks"] = [data.pop("hook")]
        if isinstance(data, dict) and isinstance(data.get("prefetch"), dict):
            data = dict(data)
            data["prefetch"] = {
                k: ({"template": v} if isinstance(v, str) else v) for k, v in data["prefetch"].items()
            }
        return data

    def token_problems(self) -> list[tuple[str, str]]:
        """(prefetch key, message) for every token that is not a valid 2.0 prefetch token."""
        out: list[tuple[str, str]] = []
        for key, spec in self.prefetch.items():
            bad = [
                (tok, hook)
                for hook in self.hooks
                for tok in TOKEN.findall(spec.template)
                if tok not in USER_TOKENS and not (tok.startswith("context.") and tok[len("context."):] in TOKEN_FIELDS[hook])
            ]
            if "{{" in TOKEN.sub("", spec.template) or "}}" in TOKEN.sub("", spec.template):
                out.append((key, f"prefetch {key!r}: unbalanced '{{{{' or '}}}}' in the template"))
            elif bad:
                tok, hook = bad[0]
                out.append((key, f"prefetch {key!r}: token {{{{{tok}}}}} is not a CDS Hooks 2.0 prefetch token "
                                 f"for {hook} (only root primitive context fields and user*Id tokens)"))
        return out

    def descriptors(self) -> list[ServiceDescriptor]:
        prefetch = {k: v.template for k, v in self.prefetch.items()} or None
        return [
            ServiceDescriptor(
                hook=h,
                id=self.id,
                title=self.title,
                description=self.description,
                prefetch=prefetch,
                usageRequirements=self.usageRequirements,
            )
            for h in self.hooks
        ]


@dataclass
class ServiceCatalog:
    services: dict[str, ServiceDefinition] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    docs: dict[str, Located] = field(default_factory=dict)

    def get(self, service_id: str) -> ServiceDefinition | None:
        return self.services.get(service_id)

    def discovery(self) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        for s in sorted(self.services.values(), key=lambda s: s.id):
            out.extend(d.wire() for d in s.descriptors())
        return {"services": out}


def load_services(hooks_dir: Path) -> tuple[ServiceCatalog, list[Problem]]:
    catalog = ServiceCatalog()
    problems: list[Problem] = []
    if not hooks_dir.is_dir():
        return catalog, [Problem(str(hooks_dir), 1, 1, "hooks directory not found")]
    for path in sorted(hooks_dir.glob("*.yaml")):
        doc, svc, errs = load_model(path, ServiceDefinition)
        problems.extend(errs)
        if doc is None or svc is None:
            continue
        bad = svc.token_problems()
        if bad:
            problems.extend(doc.problem(["prefetch", k], msg, key=True) for k, msg in bad)
            continue
        if svc.id in catalog.services:
            problems.append(doc.problem(["id"], f"service id {svc.id!r} already defined in {catalog.files[svc.id]}"))
            continue
        catalog.services[svc.id] = svc
        catalog.files[svc.id] = path
        catalog.docs[svc.id] = doc
    return catalog, problems
