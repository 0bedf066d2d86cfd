"""Machine-checkable conformance for CDS Hooks 2.0.1 payloads.

Every ``check_*`` function is pure: it takes a decoded JSON body and returns a
list of human-readable problems (an empty list means "conformant"). Each
problem starts with a JSON-pointer-like path to the offending element
(``/`` is the document root), then ``": "``, then the explanation, e.g.::

    /cards/0/suggestions: cds-resp-6: suggestions are present but selectionBehavior is missing

Three layers are combined:

1. the hand-written draft 2020-12 JSON Schemas in ``cds/hooks/schema/``
   (structure, required fields, types, enumerations, ``format``);
2. the SPEC2 "Use of JSON" rule: no ``null`` and no empty string / array /
   object anywhere, except the documented exceptions (``{"cards": []}``,
   ``{"services": []}``, ``null`` prefetch values) and the *contents* of
   ``extension`` objects (empties tolerated there, nulls still not);
3. the invariants of the HL7 logical models (cds-resp-1..7, cds-fb-1..3,
   cds-r-1..2) plus this service's own stricter rules (every card and
   suggestion has a ``uuid``, unique within the response; selectionBehavior
   only when there are suggestions; create/update carry a FHIR resource).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

__all__ = [
    "SchemaName",
    "assert_conformant_response",
    "check_discovery",
    "check_feedback",
    "check_request",
    "check_response",
    "is_absolute_uri",
    "is_rfc3339_datetime",
    "load_schema",
    "pointer",
]

SchemaName = Literal["response", "discovery", "request", "feedback"]
PathElement = str | int
Path = tuple[PathElement, ...]

#: Tokens identifying the user (SPEC2 "Prefetch tokens identifying the user").
USER_TOKENS: Final[frozenset[str]] = frozenset(
    {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
)

_BASE_TOKEN_FIELDS: Final[frozenset[str]] = frozenset({"userId", "patientId", "encounterId"})

#: Context fields marked "Prefetch Token: Yes" in the HL7 hook library (STU1,
#: v1.0.1) for the standard hooks. Hooks not listed here (org-specific hooks,
#: 0.x drafts) are only checked for token *syntax*.
HOOK_PREFETCH_TOKEN_FIELDS: Final[dict[str, frozenset[str]]] = {
    "patient-view": _BASE_TOKEN_FIELDS,
    "order-sign": _BASE_TOKEN_FIELDS,
    "order-select": _BASE_TOKEN_FIELDS,
    "order-review": _BASE_TOKEN_FIELDS,
    "medication-prescribe": _BASE_TOKEN_FIELDS,
    "encounter-start": _BASE_TOKEN_FIELDS,
    "encounter-discharge": _BASE_TOKEN_FIELDS,
    "appointment-book": _BASE_TOKEN_FIELDS,
    "order-dispatch": frozenset({"patientId", "dispatchedOrders", "performer"}),
}

_SCHEMA_PACKAGE: Final = "cds.hooks"
_SCHEMA_DIR: Final = "schema"

_TOKEN_RE: Final = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_CONTEXT_TOKEN_RE: Final = re.compile(r"context\.([A-Za-z_][A-Za-z0-9_]*)")
# FHIR relative reference: Type/id, optionally /_history/vid (FHIR R4 Reference regex).
_RELATIVE_REFERENCE_RE: Final = re.compile(
    r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?"
)
_URI_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BAD_PERCENT_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_RFC3339_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
    r"(?:[Zz]|[+-](\d{2}):(\d{2}))"
)
_SERVICE_ID_FORBIDDEN_RE: Final = re.compile(r"[\s/?#]")


# --------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------


def is_absolute_uri(value: str) -> bool:
    """True if ``value`` is an absolute URI (RFC 3986 ``scheme:...``).

    ``http``/``https`` URLs must also have a host. Characters outside the RFC 3986
    set (spaces, ``<``, ``"``, ``{`` ...) and malformed percent-escapes are rejected.
    """
    if not _URI_RE.fullmatch(value) or _BAD_PERCENT_RE.search(value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if parts.scheme.lower() in {"http", "https"}:
        try:
            return bool(parts.hostname)
        except ValueError:
            return False
    return True


def is_rfc3339_datetime(value: str) -> bool:
    """True if ``value`` is an RFC 3339 section 5.6 ``date-time`` (offset required)."""
    match = _RFC3339_RE.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    if second == 60:  # leap second: allowed by RFC 3339, not representable by datetime
        second = 59
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    off_hour, off_minute = match.group(8), match.group(9)
    if off_hour is not None and off_minute is not None:
        if int(off_hour) > 23 or int(off_minute) > 59:
            return False
    return True


def _format_checker() -> FormatChecker:
    # FormatChecker() starts from every format jsonschema can check with the
    # installed extras ("uuid", "date", ...). "uri" and "date-time" need optional
    # packages that are not dependencies of this project, so they are added here.
    checker = FormatChecker()

    @checker.checks("uri")
    def _uri(instance: object) -> bool:
        return not isinstance(instance, str) or is_absolute_uri(instance)

    @checker.checks("date-time")
    def _date_time(instance: object) -> bool:
        return not isinstance(instance, str) or is_rfc3339_datetime(instance)

    return checker


# --------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _load_schema_cached(name: SchemaName) -> dict[str, Any]:
    resource = resources.files(_SCHEMA_PACKAGE).joinpath(_SCHEMA_DIR).joinpath(f"{name}.schema.json")
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


def load_schema(name: SchemaName) -> dict[str, Any]:
    """Return (a copy of) the packaged JSON Schema ``cds/hooks/schema/{name}.schema.json``."""
    return deepcopy(_load_schema_cached(name))


@functools.lru_cache(maxsize=None)
def _validator(name: SchemaName) -> Draft202012Validator:
    return Draft202012Validator(_load_schema_cached(name), format_checker=_format_checker())


# --------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Problem:
    path: Path
    message: str

    def render(self) -> str:
        return f"{pointer(self.path)}: {self.message}"


def pointer(path: tuple[PathElement, ...] | list[PathElement]) -> str:
    """JSON-pointer-like rendering of ``path``; the root is rendered as ``/``."""
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _render(problems: list[_Problem]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for problem in problems:
        text = problem.render()
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def _dicts(value: Any, path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield ``(path, item)`` for the dict items of ``value`` if it is a list."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict):
                yield path + (index,), item


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


# --------------------------------------------------------------------------------------
# Layer 1: JSON Schema
# --------------------------------------------------------------------------------------

_EMPTINESS_VALIDATORS: Final = frozenset({"minLength", "minItems", "minProperties"})


def _describe_schema_error(error: ValidationError) -> str:
    last = error.absolute_path[-1] if error.absolute_path else None
    if error.validator == "maxLength" and last == "summary" and isinstance(error.instance, str):
        return f"summary must be shorter than 140 characters (it has {len(error.instance)})"
    if error.validator == "enum" and last == "outcome":
        return f"cds-fb-1: outcome must be 'accepted' or 'overridden', not {error.instance!r}"
    if error.validator == "enum" and last == "actionSelectionBehavior":
        return f"cds-resp-7: actionSelectionBehavior must be one of 'all', 'any', 'at-most-one', not {error.instance!r}"
    if error.validator == "format" and error.validator_value == "date-time":
        return f"{error.instance!r} is not an RFC 3339 date-time (e.g. 2021-12-11T10:05:31Z)"
    if error.validator == "format" and error.validator_value == "uri":
        return f"{error.instance!r} is not an absolute URL"
    return error.message


def _sort_key(path: Path) -> list[tuple[int, int, str]]:
    return [(0, p, "") if isinstance(p, int) else (1, 0, p) for p in path]


def _schema_problems(name: SchemaName, body: Any, covered: set[Path]) -> list[_Problem]:
    """Schema errors, minus the null/empty errors already reported by the JSON-rule scan."""
    problems: list[_Problem] = []
    errors = sorted(_validator(name).iter_errors(body), key=lambda e: (_sort_key(tuple(e.absolute_path)), e.message))
    for error in errors:
        path: Path = tuple(error.absolute_path)
        if path in covered and (
            error.validator in _EMPTINESS_VALIDATORS or (error.validator == "type" and error.instance is None)
        ):
            continue
        problems.append(_Problem(path, _describe_schema_error(error)))
    return problems


# --------------------------------------------------------------------------------------
# Layer 2: SPEC2 "Use of JSON" (no null, no empty values)
# --------------------------------------------------------------------------------------


def _scan_json_rules(
    node: Any,
    path: Path,
    *,
    allow_empty: frozenset[Path] = frozenset(),
    allow_null: frozenset[Path] = frozenset(),
    skip: frozenset[Path] = frozenset(),
    inside_extension: bool = False,
) -> list[_Problem]:
    """Report ``null`` and empty ``""``/``[]``/``{}`` values.

    ``allow_empty``/``allow_null`` are exact paths where the spec permits them;
    ``skip`` are subtrees that are not ours to judge (FHIR content sent by the
    client). Inside an ``extension`` object empties are tolerated, nulls are not.
    """
    problems: list[_Problem] = []

    def visit(value: Any, where: Path, in_ext: bool) -> None:
        if where in skip:
            return
        if value is None:
            if where not in allow_null:
                problems.append(_Problem(where, "null is not allowed (omit optional fields that have no value)"))
            return
        # The root's emptiness is the schema's business ("'cards' is a required property").
        tolerate_empty = in_ext or where in allow_empty or where == ()
        if value == "" and isinstance(value, str):
            if not tolerate_empty:
                problems.append(_Problem(where, "empty string is not allowed (omit the field instead)"))
            return
        if isinstance(value, list):
            if not value and not tolerate_empty:
                problems.append(_Problem(where, "empty array is not allowed (omit the field instead)"))
            for index, item in enumerate(value):
                visit(item, where + (index,), in_ext)
            return
        if isinstance(value, dict):
            if not value and not tolerate_empty:
                problems.append(_Problem(where, "empty object is not allowed (omit the field instead)"))
            for key, item in value.items():
                # A CDS Hooks `extension` is an object: its own emptiness is judged
                # like any other value, its contents belong to the extension author.
                # (FHIR's `extension` is an array and gets no special treatment.)
                if key == "extension" and isinstance(item, dict) and not in_ext and where + (key,) not in skip:
                    if not item:
                        problems.append(_Problem(where + (key,), "empty object is not allowed (omit the field instead)"))
                    for sub_key, sub_item in item.items():
                        visit(sub_item, where + (key, sub_key), True)
                    continue
                visit(item, where + (key,), in_ext)

    visit(node, path, inside_extension)
    return problems


# --------------------------------------------------------------------------------------
# Layer 3: invariants — response
# --------------------------------------------------------------------------------------


def _action_problems(action: dict[str, Any], path: Path) -> list[_Problem]:
    problems: list[_Problem] = []
    action_type = action.get("type")
    resource = action.get("resource")
    if action_type == "delete":
        if "resourceId" not in action:
            problems.append(
                _Problem(path, "cds-resp-2: a delete action must identify the resource with resourceId (e.g. 'ServiceRequest/123')")
            )
        if isinstance(resource, str):
            problems.append(
                _Problem(path + ("resource",), "a bare id string in resource is DEPRECATED for delete; use resourceId instead")
            )
    elif action_type in {"create", "update"}:
        if "resource" not in action:
            problems.append(_Problem(path, f"a {action_type} action must carry the full FHIR resource in 'resource'"))
        elif isinstance(resource, dict):
            if "resourceType" not in resource:
                problems.append(_Problem(path + ("resource",), f"the resource of a {action_type} action has no resourceType"))
            elif not isinstance(resource["resourceType"], str) and resource["resourceType"] is not None:
                problems.append(_Problem(path + ("resource", "resourceType"), "resourceType must be a string"))
        elif resource is not None:
            problems.append(
                _Problem(
                    path + ("resource",),
                    f"the resource of a {action_type} action must be a FHIR resource object, not a {_type_name(resource)}",
                )
            )
    resource_id = action.get("resourceId")
    if isinstance(resource_id, str) and resource_id and not _RELATIVE_REFERENCE_RE.fullmatch(resource_id):
        problems.append(
            _Problem(
                path + ("resourceId",),
                f"resourceId must be a relative reference like 'ServiceRequest/123', not {resource_id!r}",
            )
        )
    return problems


def _response_invariant_problems(body: dict[str, Any]) -> list[_Problem]:
    problems: list[_Problem] = []
    uuid_paths: dict[str, Path] = {}

    def note_uuid(owner: dict[str, Any], owner_path: Path, what: str) -> None:
        if "uuid" not in owner:
            problems.append(
                _Problem(
                    owner_path,
                    f"{what} has no uuid (this service requires one on every {what} so feedback can reference it)",
                )
            )
            return
        value = owner["uuid"]
        if not isinstance(value, str) or not value:
            return  # reported by the schema / JSON-rule layers
        if value in uuid_paths:
            problems.append(
                _Problem(
                    owner_path + ("uuid",),
                    f"duplicate uuid {value!r} (already used at {pointer(uuid_paths[value])}); "
                    "uuids must be unique within a response",
                )
            )
        else:
            uuid_paths[value] = owner_path + ("uuid",)

    for card_path, card in _dicts(body.get("cards"), ("cards",)):
        note_uuid(card, card_path, "card")
        suggestions = card.get("suggestions")
        has_suggestions = isinstance(suggestions, list) and len(suggestions) > 0
        if has_suggestions and "selectionBehavior" not in card:
            problems.append(
                _Problem(card_path, "cds-resp-6: the card has suggestions but no selectionBehavior")
            )
        if not has_suggestions and "selectionBehavior" in card:
            problems.append(
                _Problem(
                    card_path + ("selectionBehavior",),
                    "selectionBehavior is present but the card has no suggestions (omit it)",
                )
            )
        if has_suggestions and card.get("selectionBehavior") == "at-most-one":
            recommended = [
                pointer(spath) for spath, s in _dicts(suggestions, card_path + ("suggestions",)) if s.get("isRecommended") is True
            ]
            if len(recommended) > 1:
                problems.append(
                    _Problem(
                        card_path + ("suggestions",),
                        "cds-resp-1: selectionBehavior is 'at-most-one' but more than one suggestion has "
                        f"isRecommended true ({', '.join(recommended)})",
                    )
                )
        for spath, suggestion in _dicts(suggestions, card_path + ("suggestions",)):
            note_uuid(suggestion, spath, "suggestion")
            for apath, action in _dicts(suggestion.get("actions"), spath + ("actions",)):
                if "description" not in action:
                    problems.append(_Problem(apath, "cds-resp-5: a suggestion action must have a description"))
                problems.extend(_action_problems(action, apath))
        for rpath, coding in _dicts(card.get("overrideReasons"), card_path + ("overrideReasons",)):
            if "display" not in coding:
                problems.append(_Problem(rpath, "cds-resp-4: an overrideReasons Coding must have a display"))
        for lpath, link in _dicts(card.get("links"), card_path + ("links",)):
            if "appContext" in link and link.get("type") != "smart":
                problems.append(
                    _Problem(
                        lpath + ("appContext",),
                        f"cds-resp-3: appContext is only allowed on 'smart' links (this link's type is {link.get('type')!r})",
                    )
                )
    for apath, action in _dicts(body.get("systemActions"), ("systemActions",)):
        problems.extend(_action_problems(action, apath))
    return problems


def check_response(body: dict[str, Any]) -> list[str]:
    """Problems with a CDS Service response (``{"cards": [...], "systemActions": [...]}``)."""
    scan = _scan_json_rules(body, (), allow_empty=frozenset({("cards",)}))
    problems = _schema_problems("response", body, {p.path for p in scan}) + scan
    if isinstance(body, dict):
        problems += _response_invariant_problems(body)
    return _render(problems)


def assert_conformant_response(body: dict[str, Any]) -> None:
    """Raise ``AssertionError`` listing every problem if ``body`` is not a conformant response."""
    problems = check_response(body)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise AssertionError(f"CDS Hooks response has {len(problems)} conformance problem(s):\n{listing}")


# --------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------


def _prefetch_template_problems(template: str, hook: Any, path: Path) -> list[_Problem]:
    problems: list[_Problem] = []
    allowed_fields = HOOK_PREFETCH_TOKEN_FIELDS.get(hook) if isinstance(hook, str) else None
    for match in _TOKEN_RE.finditer(template):
        token = match.group(1).strip()
        shown = match.group(0)
        if token in USER_TOKENS:
            continue
        context_match = _CONTEXT_TOKEN_RE.fullmatch(token)
        if context_match is not None:
            field = context_match.group(1)
            if allowed_fields is not None and field not in allowed_fields:
                problems.append(
                    _Problem(
                        path,
                        f"prefetch token {shown}: context.{field} is not a prefetch-token field of hook {hook!r} "
                        f"(allowed: {', '.join('context.' + f for f in sorted(allowed_fields))})",
                    )
                )
            continue
        if token.startswith("context."):
            problems.append(
                _Problem(
                    path,
                    f"prefetch token {shown} is not valid in CDS Hooks 2.0: only root-level primitive context fields "
                    "({{context.<field>}}) may be used, not dotted paths or FHIRPath",
                )
            )
        else:
            problems.append(
                _Problem(
                    path,
                    f"prefetch token {shown} is not valid in CDS Hooks 2.0: allowed tokens are {{{{context.<field>}}}}, "
                    + ", ".join(f"{{{{{t}}}}}" for t in sorted(USER_TOKENS)),
                )
            )
    remainder = _TOKEN_RE.sub("", template)
    if "{{" in remainder or "}}" in remainder:
        problems.append(_Problem(path, "unbalanced '{{' / '}}' in prefetch template"))
    return problems


def _discovery_invariant_problems(body: dict[str, Any]) -> list[_Problem]:
    problems: list[_Problem] = []
    seen: dict[tuple[str, str], Path] = {}
    for spath, service in _dicts(body.get("services"), ("services",)):
        service_id = service.get("id")
        hook = service.get("hook")
        if isinstance(service_id, str) and service_id and _SERVICE_ID_FORBIDDEN_RE.search(service_id):
            problems.append(
                _Problem(
                    spath + ("id",),
                    f"id {service_id!r} must be usable as the single URL path segment in "
                    "{baseUrl}/cds-services/{id} (no whitespace, '/', '?' or '#')",
                )
            )
        if isinstance(service_id, str) and isinstance(hook, str) and service_id and hook:
            key = (service_id, hook)
            if key in seen:
                problems.append(
                    _Problem(
                        spath,
                        f"duplicate service: id {service_id!r} is already registered for hook {hook!r} at "
                        f"{pointer(seen[key])}; (id, hook) pairs must be unique",
                    )
                )
            else:
                seen[key] = spath
        prefetch = service.get("prefetch")
        if isinstance(prefetch, dict):
            for key_name, template in prefetch.items():
                if isinstance(template, str):
                    problems.extend(_prefetch_template_problems(template, hook, spath + ("prefetch", key_name)))
    return problems


def check_discovery(body: dict[str, Any]) -> list[str]:
    """Problems with a discovery response (``{"services": [...]}``)."""
    scan = _scan_json_rules(body, (), allow_empty=frozenset({("services",)}))
    problems = _schema_problems("discovery", body, {p.path for p in scan}) + scan
    if isinstance(body, dict):
        problems += _discovery_invariant_problems(body)
    return _render(problems)


# --------------------------------------------------------------------------------------
# Request
# --------------------------------------------------------------------------------------


def _request_invariant_problems(body: dict[str, Any]) -> list[_Problem]:
    problems: list[_Problem] = []
    auth = body.get("fhirAuthorization")
    if "fhirAuthorization" in body and "fhirServer" not in body:
        problems.append(_Problem((), "cds-r-1: fhirServer is required when fhirAuthorization is present"))
    if isinstance(auth, dict):
        token_type = auth.get("token_type")
        if "token_type" in auth and token_type != "Bearer":
            problems.append(_Problem(("fhirAuthorization", "token_type"), f"token_type must be 'Bearer', not {token_type!r}"))
        scope = auth.get("scope")
        if isinstance(scope, str):
            patient_scopes = [s for s in scope.split() if s.startswith("patient/")]
            if patient_scopes and "patient" not in auth:
                problems.append(
                    _Problem(
                        ("fhirAuthorization",),
                        "cds-r-2: scope includes patient/ scopes "
                        f"({', '.join(patient_scopes)}) but fhirAuthorization.patient is missing",
                    )
                )
    return problems


def check_request(body: dict[str, Any]) -> list[str]:
    """Problems with a hook request (the POST body sent to ``{baseUrl}/cds-services/{id}``).

    Hook context and prefetch *contents* are FHIR data from the client and are not
    judged (the Sandbox sends e.g. empty ``entry`` arrays and Bundles without ``type``).
    """
    skip: set[Path] = set()
    allow_null: set[Path] = set()
    context = body.get("context") if isinstance(body, dict) else None
    if isinstance(context, dict) and context:  # an empty context is still reported
        skip.add(("context",))
    prefetch = body.get("prefetch") if isinstance(body, dict) else None
    if isinstance(prefetch, dict):
        for key, value in prefetch.items():
            if value is None:
                allow_null.add(("prefetch", key))
            else:
                skip.add(("prefetch", key))
    scan = _scan_json_rules(body, (), allow_null=frozenset(allow_null), skip=frozenset(skip))
    problems = _schema_problems("request", body, {p.path for p in scan}) + scan
    if isinstance(body, dict):
        problems += _request_invariant_problems(body)
    return _render(problems)


# --------------------------------------------------------------------------------------
# Feedback
# --------------------------------------------------------------------------------------


def _feedback_invariant_problems(body: dict[str, Any]) -> list[_Problem]:
    problems: list[_Problem] = []
    for fpath, item in _dicts(body.get("feedback"), ("feedback",)):
        accepted = item.get("acceptedSuggestions")
        if item.get("outcome") == "accepted" and not (isinstance(accepted, list) and accepted):
            problems.append(
                _Problem(fpath, "cds-fb-2: outcome 'accepted' requires a non-empty acceptedSuggestions array")
            )
        reason = item.get("overrideReason")
        if isinstance(reason, dict) and "reason" not in reason and "userComment" not in reason:
            problems.append(
                _Problem(
                    fpath + ("overrideReason",),
                    "cds-fb-3: overrideReason must contain a reason, a userComment, or both "
                    "(omit overrideReason for an override without a reason)",
                )
            )
    return problems


def check_feedback(body: dict[str, Any]) -> list[str]:
    """Problems with a feedback POST body (``{"feedback": [...]}``)."""
    scan = _scan_json_rules(body, ())
    problems = _schema_problems("feedback", body, {p.path for p in scan}) + scan
    if isinstance(body, dict):
        problems += _feedback_invariant_problems(body)
    return _render(problems)
