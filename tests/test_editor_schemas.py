"""The editor schemas in docs/schemas/: up to date, valid draft 2020-12, and accepting every
bundled pack, knowledge table and service file; and they catch the mistakes the loader catches."""

from __future__ import annotations

import ast
import copy
import functools
import glob
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from cds.engine import schemas as S

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = ROOT / "docs" / "schemas"


def _plain(v: Any) -> Any:
    """YAML → JSON data model: dates and times become ISO strings (as editors see them)."""
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _load(path: Path) -> Any:
    return _plain(yaml.safe_load(path.read_text(encoding="utf-8")))


@functools.lru_cache(maxsize=None)
def _schemas() -> dict[str, dict[str, Any]]:
    return S.editor_schemas()


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_schemas()[name], format_checker=Draft202012Validator.FORMAT_CHECKER)


def _errors(name: str, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(document)'}: {e.message}" for e in _validator(name).iter_errors(doc)]


def _pack_files() -> list[tuple[str, Path]]:
    """Every bundled YAML file an author edits, with the schema it must satisfy."""
    out: list[tuple[str, Path]] = []
    for manifest in sorted((ROOT / "rules").rglob("pack.yaml")):
        pack_dir = manifest.parent
        doc = _load(manifest)
        out.append(("pack.schema.json", manifest))
        for rel in doc.get("rules", ["rules.yaml"]):
            out.append(("rules.schema.json", pack_dir / rel))
        out.append(("cards.schema.json", pack_dir / doc.get("cards", "cards.yaml")))
        for pattern in doc.get("tests", ["tests/*.yaml"]):
            out.extend(("tests.schema.json", Path(p)) for p in sorted(glob.glob(str(pack_dir / pattern))))
    out.extend(("service.schema.json", p) for p in sorted((ROOT / "hooks").glob("*.yaml")))
    out.extend(("knowledge-meta.schema.json", p) for p in sorted((ROOT / "knowledge").rglob("*.meta.yaml")))
    return out


# ------------------------------------------------------------------ generated files


def test_generated_schemas_are_up_to_date(tmp_path: Path) -> None:
    written = S.write_editor_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(S.EDITOR_GLOBS)
    committed = sorted(p.name for p in SCHEMA_DIR.glob("*.json"))
    assert committed == sorted(p.name for p in written), "docs/schemas/ has missing or extra files"
    stale = [p.name for p in written if p.read_bytes() != (SCHEMA_DIR / p.name).read_bytes()]
    assert not stale, f"docs/schemas/ is out of date ({stale}); run: python -m cds.engine.schemas"


@pytest.mark.parametrize("name", sorted(S.EDITOR_GLOBS))
def test_schema_is_valid_2020_12(name: str) -> None:
    schema = _schemas()[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/" + name)
    assert schema["title"] and schema["description"]


def test_committed_form_is_sorted_two_space_json() -> None:
    for name, schema in _schemas().items():
        text = (SCHEMA_DIR / name).read_text(encoding="utf-8")
        assert text == S.dumps(schema)
        assert text.startswith("{\n  \"")


def test_docs_show_the_vscode_mapping_for_every_schema() -> None:
    guide = (ROOT / "docs" / "authoring.md").read_text(encoding="utf-8")
    assert '"yaml.schemas"' in guide
    for schema_path, globs in S.vscode_settings()["yaml.schemas"].items():
        for g in globs:
            assert f'"{schema_path}": "{g}"' in guide or f'"{schema_path}": ["{g}"' in guide, (schema_path, g)


# ------------------------------------------------------------------ bundled files validate


@pytest.mark.parametrize(("name", "path"), _pack_files(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_bundled_file_validates(name: str, path: Path) -> None:
    assert path.is_file(), f"{path} is named by its pack but does not exist"
    errors = _errors(name, _load(path))
    assert not errors, f"{path.relative_to(ROOT)} against {name}:\n  " + "\n  ".join(errors)


def test_every_kind_of_file_is_covered() -> None:
    kinds = {name for name, _ in _pack_files()}
    assert kinds == set(S.EDITOR_GLOBS)


# ------------------------------------------------------------------ the schemas catch what the loader catches


def _rule(**over: Any) -> dict[str, Any]:
    r = {"id": "r", "title": {"nb": "x", "en": "x"}, "hooks": ["order-sign"], "severity": "info", "card": "c"}
    r.update(over)
    return {"rules": [r]}


@pytest.mark.parametrize(
    ("doc", "ok"),
    [
        (_rule(), True),
        (_rule(for_each="meds.focus", table={"table": "t", "column": "atc"}), True),
        (_rule(table={"table": "t", "column": "atc"}), False),  # a table join needs for_each
        (_rule(pair={"table": "t", "a": "a", "b": "b"}, for_each="meds.focus"), False),  # pair excludes for_each
        (_rule(colour="red"), False),  # unknown key
        (_rule(hooks=["order-sing"]), False),
        (_rule(severity="warnig"), False),
        (_rule(severity={"if": [True, "critical", "none"]}), True),
        (_rule(when={"!": {"var": "patient.weight"}}, let={"x": {"per_kg": [1, 2]}}), True),
        (_rule(title={"nb": "x"}), False),  # both languages
    ],
)
def test_rules_schema_mirrors_loader(doc: dict[str, Any], ok: bool) -> None:
    assert (not _errors("rules.schema.json", doc)) is ok


def _card(**over: Any) -> dict[str, Any]:
    c = {"summary": {"nb": "x", "en": "x"}, "source": {"label": "x"}}
    c.update(over)
    return {"cards": {"c": c}}


_DESC = {"nb": "x", "en": "x"}


@pytest.mark.parametrize(
    ("doc", "ok"),
    [
        (_card(), True),
        (_card(source={"label": {"nb": "x", "en": "y"}, "url": "{{ row.source_url }}"}), True),
        (_card(suggestions=[{"id": "s", "label": _DESC, "actions": [{"type": "delete", "description": _DESC}]}]), False),
        (_card(suggestions=[{"id": "s", "label": _DESC, "actions": [{"type": "delete", "description": _DESC, "resource_id": "{{ item.ref }}"}]}]), True),
        (_card(suggestions=[{"id": "s", "label": _DESC, "actions": [{"type": "create", "description": _DESC}]}]), False),
        (_card(suggestions=[{"id": "s", "label": _DESC, "actions": [{"type": "create", "description": _DESC, "resource": {"resourceType": "ServiceRequest"}}]}]), True),
        (_card(suggestions=[{"id": "s", "label": _DESC, "actions": [{"type": "update", "description": _DESC}]}]), False),
        (_card(suggestions=[{"id": "s", "label": _DESC, "actions": [{"type": "update", "description": _DESC, "patch": {"from": "item", "set": {"a.b": 1}}}]}]), True),
        (_card(links=[{"label": _DESC, "url": "https://x", "app_context": "a"}]), False),  # cds-resp-3
        (_card(links=[{"label": _DESC, "url": "https://x", "type": "smart", "app_context": "a"}]), True),
        (_card(selection_behavior="all"), False),
    ],
)
def test_cards_schema_mirrors_loader(doc: dict[str, Any], ok: bool) -> None:
    assert (not _errors("cards.schema.json", doc)) is ok


_SVC = {"id": "svc", "hook": "order-sign", "description": "x", "packs": [{"id": "p"}]}


@pytest.mark.parametrize(
    ("over", "ok"),
    [
        ({}, True),
        ({"prefetch": {"p": "Patient/{{context.patientId}}", "u": {"template": "Practitioner/{{userPractitionerId}}", "required": False}}}, True),
        ({"prefetch": {"m": "MedicationRequest?patient={{context.patientId}}&x={{context.draftOrders}}"}}, False),
        ({"prefetch": {"p": "Patient/{{context.patientId}}}}"}}, False),  # unbalanced braces
        ({"hooks": ["order-sign"]}, False),  # hook and hooks together
        ({"packs": []}, False),
        ({"locale": "de"}, False),
    ],
)
def test_service_schema_mirrors_loader(over: dict[str, Any], ok: bool) -> None:
    assert (not _errors("service.schema.json", {**_SVC, **over})) is ok


def test_knowledge_meta_needs_required_source_and_enum_values() -> None:
    good = {"id": "a/b", "title": "t", "release": "1", "columns": {"x": {"type": "enum", "values": ["1"]}, "source": {"type": "text", "required": True}}}
    assert not _errors("knowledge-meta.schema.json", good)
    no_source = copy.deepcopy(good)
    del no_source["columns"]["source"]
    assert _errors("knowledge-meta.schema.json", no_source)
    optional_source = copy.deepcopy(good)
    optional_source["columns"]["source"]["required"] = False
    assert _errors("knowledge-meta.schema.json", optional_source)
    no_values = copy.deepcopy(good)
    del no_values["columns"]["x"]["values"]
    assert _errors("knowledge-meta.schema.json", no_values)


def _tests(case: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"hook": "order-sign", "now": "2026-11-25T12:00:00Z", **top, "cases": [{"name": "c", "expect": {"cards": []}, **case}]}


@pytest.mark.parametrize(
    ("doc", "ok"),
    [
        (_tests({"patient": {"age": "60y", "weight": {"kg": 20, "date": "-2d"}}}), True),
        (_tests({"patient": {"weigth": 20}}), False),  # typo: the runner would silently ignore it
        (_tests({"patient": {"age": 60}}), False),  # an age needs a unit
        (_tests({"patient": {"conditions": [{"text": "no code"}]}}), False),
        (_tests({"orders+": [{"atc": "M01AE01"}]}), False),  # `key+` only inside patient
        (_tests({"use": "base", "patient": {"medications+": [{"atc": "L04AX01"}]}}, fixtures={"base": {"patient": {"age": "60y"}}}), True),
        (_tests({"matrix": {"w": [10, 20]}, "patient": {"weight": "${w}"}}), True),
        (_tests({"matrix": {"s": ["info"]}, "expect": {"cards": [{"rule": "r", "indicator": "${s}"}]}}), False),  # checked before substitution
        (_tests({"orders": [{"atc": "M01AE01", "route": "oral", "dose": "400 mg", "frequency": "3/d"}]}), True),
        (_tests({"patient": {"episodes": [{"system": "urn:x", "code": "C1", "start": "-30d"}], "procedures+": [{"system": "urn:y", "code": 42}]}}), True),
        (_tests({"patient": {"episodes": [{"code": "C1"}]}}), False),  # an episode needs its code system
        (_tests({"patient": {"conditions": [{"icd10": "I26", "status": "resolved", "abatement": "-1y"}]}}), True),
        (_tests({"expect": {"cards": [{"rule": "r", "indicator": "severe"}]}}), False),
        (_tests({"name": None}), False),
        ({"cases": []}, False),
    ],
)
def test_tests_schema_mirrors_runner(doc: dict[str, Any], ok: bool) -> None:
    assert (not _errors("tests.schema.json", doc)) is ok


def test_terse_keys_are_keys_the_runner_reads() -> None:
    """Every key the tests schema offers for the terse patient is one cds/testing/fixtures.py reads."""
    import cds.testing.fixtures as fx

    tree = ast.parse(Path(fx.__file__).read_text(encoding="utf-8"))
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                read.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            read.add(node.slice.value)
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            read.add(node.left.value)
        elif isinstance(node, ast.Dict):  # e.g. COND: the condition code systems, read as `k in spec`
            read.update(k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
    defs = _schemas()["tests.schema.json"]["$defs"]
    terse = ("TersePatient", "TerseMedication", "TerseCondition", "TerseObservation", "TerseEpisode", "TerseProcedure", "WeightKg", "WeightQuantity", "HeightCm", "DoseQuantity", "DoseRange")
    for name in terse:
        keys = {k.rstrip("+") for k in defs[name]["properties"]}
        assert keys <= read, f"{name}: {sorted(keys - read)} are not read by cds/testing/fixtures.py"
    # the encounter is read in cds/testing/cases.py
    import cds.testing.cases as cs

    src = Path(cs.__file__).read_text(encoding="utf-8")
    for k in defs["TerseEncounter"]["properties"]:
        assert f'"{k}"' in src, k


def test_json_logic_names_every_engine_function() -> None:
    from cds.engine.functions import OPERATOR_NAMES

    ops = _schemas()["rules.schema.json"]["$defs"]["JsonLogicOperation"]["properties"]
    assert set(OPERATOR_NAMES) <= set(ops)
