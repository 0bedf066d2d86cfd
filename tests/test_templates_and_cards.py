"""Card text templates (cds.cards.templates) and card rendering/selection (cds.cards.render).

Cards are rendered from a small real pack written to a temporary directory and loaded with
load_pack, so findings carry real compiled rules and card templates.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from cds.cards.render import PROVENANCE, dedupe_key, render_card, select
from cds.cards.templates import SUMMARY_TEXT, fmt_number, fmt_value, literal_length, lookup, placeholders, render_text, render_value
from cds.engine.evaluate import Finding
from cds.engine.knowledge import KnowledgeCache
from cds.engine.loader import LoadedPack, load_pack

LONG = "Ibuprofen 400 mg film-coated tablets, blister pack of 30 (hospital supply)"  # 74 chars


# --------------------------------------------------------------------------- number formatting


class TestNumbers:
    @pytest.mark.parametrize(
        "v,nb,en",
        [(2.5, "2,5", "2.5"), (2, "2", "2"), (2.0, "2", "2"), (0.125, "0,125", "0.125"), (1.23456, "1,235", "1.235"), (-3.5, "-3,5", "-3.5"), (1500, "1500", "1500")],
    )
    def test_decimal_mark(self, v: float, nb: str, en: str) -> None:
        assert fmt_value(v, "nb") == nb
        assert fmt_value(v, "en") == en

    @pytest.mark.parametrize(
        "v,flt,en",
        [
            (2.5, "round2", "2.5"),  # trailing zeros trimmed
            (3.04, "round1", "3"),
            (3.0, "round3", "3"),
            (2.25, "round1", "2.3"),  # half up
            (2.4, "round0", "2"),
            (2.5, "round0", "3"),
            (1.23456, "round3", "1.235"),
            (430.0, "round0", "430"),
            (0.1 + 0.2, "round2", "0.3"),
            (-1.26, "round1", "-1.3"),
        ],
    )
    def test_round_filters(self, v: float, flt: str, en: str) -> None:
        assert fmt_value(v, "en", flt) == en
        assert fmt_value(v, "nb", flt) == en.replace(".", ",")

    def test_round_trims_zeros_in_templates(self) -> None:
        data = {"x": 2.50, "y": 10.0}
        assert render_text("{{ x | round2 }} / {{ y|round1 }}", data, "nb") == "2,5 / 10"
        assert render_text("{{ x | round2 }} / {{ y|round1 }}", data, "en") == "2.5 / 10"

    def test_fmt_number_directly(self) -> None:
        assert fmt_number(1234.5, "nb") == "1234,5"
        assert fmt_number(1234.5, "en", 0) == "1235"

    def test_int_is_not_a_bool(self) -> None:
        assert fmt_value(True, "nb") == "ja" and fmt_value(False, "nb") == "nei"
        assert fmt_value(True, "en") == "yes" and fmt_value(False, "en") == "no"
        assert fmt_value(1, "en") == "1" and fmt_value(0, "nb") == "0"


# --------------------------------------------------------------------------- text rendering


DATA: dict[str, Any] = {
    "item": {"name": "ibuprofen", "display": LONG, "dose": {"mg": 437.5}, "atc": ["M01AE01", "N02BE01"], "ref": "MedicationRequest/d1"},
    "patient": {"weight": {"kg": 18.25, "date": "2024-06-14T08:00:00+00:00"}},
    "let": {"limit_mg": 180.0, "ok": True, "none": None},
    "row": {"id": "IBU-1", "note": "Avoid"},
}


class TestRenderText:
    def test_paths(self) -> None:
        assert render_text("{{ item.name }}: {{ item.dose.mg }} mg", DATA, "nb") == "ibuprofen: 437,5 mg"
        assert render_text("{{item.name}}", DATA, "en") == "ibuprofen"
        assert render_text("{{ item.atc.1 }}", DATA, "en") == "N02BE01"

    def test_date_filter(self) -> None:
        assert render_text("målt {{ patient.weight.date | date }}", DATA, "nb") == "målt 2024-06-14"
        assert render_text("{{ patient.weight.date | date }}", {"patient": {"weight": {"date": "2024-06-14"}}}, "en") == "2024-06-14"

    def test_case_filters(self) -> None:
        assert render_text("{{ row.note | upper }} {{ row.note | lower }}", DATA, "en") == "AVOID avoid"

    def test_list(self) -> None:
        assert render_text("{{ item.atc }}", DATA, "en") == "M01AE01, N02BE01"
        assert render_text("{{ v }}", {"v": [1.5, 2]}, "nb") == "1,5, 2"

    @pytest.mark.parametrize("path", ["item.nope", "nope", "item.name.deeper", "item.atc.5", "item.atc.x", "let.none"])
    def test_unknown_path_renders_question_mark(self, path: str) -> None:
        assert render_text("[{{ %s }}]" % path, DATA, "nb") == "[?]"
        assert render_text("[{{ %s | round1 }}]" % path, DATA, "en") == "[?]"

    def test_text_without_placeholders_and_malformed_ones(self) -> None:
        assert render_text("no placeholders", DATA, "en") == "no placeholders"
        assert render_text("{{ }} {{ 1abc }} {single}", DATA, "en") == "{{ }} {{ 1abc }} {single}"

    def test_lookup(self) -> None:
        assert lookup(DATA, "item.dose.mg") == 437.5
        assert lookup(DATA, "item.atc.0") == "M01AE01"
        assert lookup(DATA, "item.nope.x") is None
        assert lookup({}, "a") is None

    def test_truncation_only_when_asked(self) -> None:
        full = render_text("{{ item.display }}", DATA, "en")
        assert full == LONG
        short = render_text("{{ item.display }}", DATA, "en", SUMMARY_TEXT)
        assert len(short) == SUMMARY_TEXT and short.endswith("…") and LONG.startswith(short[:-1])
        exact = "x" * SUMMARY_TEXT
        assert render_text("{{ v }}", {"v": exact}, "en", SUMMARY_TEXT) == exact  # exactly 40: kept whole
        assert render_text("{{ v }}", {"v": exact + "y"}, "en", SUMMARY_TEXT) == "x" * 39 + "…"

    def test_numbers_are_never_truncated(self) -> None:
        assert render_text("{{ v }}", {"v": 123456789.125}, "en", 5) == "123456789.125"

    def test_placeholders_and_literal_length(self) -> None:
        tpl = {"a": "{{ item.name }} x {{ let.limit_mg | round1 }}", "b": ["{{row.id}}", 3]}
        assert placeholders(tpl) == [("item.name", None), ("let.limit_mg", "round1"), ("row.id", None)]
        assert literal_length("ab {{ x }} cd") == len("ab  cd")


class TestRenderValue:
    def test_lone_placeholder_keeps_type(self) -> None:
        assert render_value("{{ let.limit_mg }}", DATA, "nb") == 180.0
        assert render_value("  {{ let.ok }} ", DATA, "nb") is True
        assert render_value("{{ item.atc }}", DATA, "nb") == ["M01AE01", "N02BE01"]
        assert render_value("{{ item.dose }}", DATA, "nb") == {"mg": 437.5}
        assert render_value("{{ item.nope }}", DATA, "nb") is None

    def test_filter_or_text_makes_a_string(self) -> None:
        assert render_value("{{ let.limit_mg | round0 }}", DATA, "nb") == "180"
        assert render_value("{{ let.limit_mg }} mg", DATA, "nb") == "180 mg"
        assert render_value("{{ item.dose.mg }}{{ item.dose.mg }}", DATA, "nb") == "437,5437,5"

    def test_structures(self) -> None:
        tpl = {
            "resourceType": "MedicationRequest",
            "dose": {"value": "{{ let.limit_mg }}", "unit": "mg"},
            "text": ["Give {{ let.limit_mg }} mg", 5, None, True],
        }
        assert render_value(tpl, DATA, "nb") == {
            "resourceType": "MedicationRequest",
            "dose": {"value": 180.0, "unit": "mg"},
            "text": ["Give 180 mg", 5, None, True],
        }
        assert tpl["dose"]["value"] == "{{ let.limit_mg }}"  # the template is not modified


# --------------------------------------------------------------------------- cards from a real pack


PACK_YAML = """
id: test.cards
version: 1.0.0
status: active
effective: {from: 2020-01-01}
title: {nb: Testpakke, en: Test pack}
description: {nb: For tester, en: For tests}
authors: [tests]
override_reasons:
  - code: will-monitor
    display: {nb: Vil overvåke, en: Will monitor}
"""

RULES_YAML = """
rules:
  - id: note
    title: {nb: Merknad, en: Note}
    hooks: [order-sign]
    for_each: meds.draft
    severity: warning
    card: note
  - id: keyed-a
    title: {nb: A, en: A}
    hooks: [order-sign]
    for_each: meds.draft
    severity: warning
    card: note
    dedupe: "same:{{ item.atc }}"
  - id: keyed-b
    title: {nb: B, en: B}
    hooks: [order-sign]
    for_each: meds.draft
    severity: critical
    card: note
    dedupe: "same:{{ item.atc }}"
  - id: codes
    title: {nb: Koder, en: Codes}
    hooks: [order-sign]
    for_each: meds.draft
    severity: info
    card: codes
"""

CARDS_YAML = """
cards:
  note:
    summary:
      nb: "Merknad: {{ item.display }} ({{ item.dose.mg }} mg)"
      en: "Note: {{ item.display }} ({{ item.dose.mg }} mg)"
    detail:
      nb: "Hele navnet: {{ item.display }}; {{ item.dose.mg | round1 }} mg"
      en: "Full name: {{ item.display }}; {{ item.dose.mg | round1 }} mg"
    source:
      label: {nb: "Kilde {{ item.name }}", en: "Source {{ item.name }}"}
    override_reasons: [will-monitor]
  codes:
    summary: {nb: "Koder: {{ item.atc }}", en: "Codes: {{ item.atc }}"}
    source: {label: Tests}
"""


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> LoadedPack:
    d = tmp_path_factory.mktemp("pack")
    (d / "pack.yaml").write_text(textwrap.dedent(PACK_YAML), encoding="utf-8")
    (d / "rules.yaml").write_text(textwrap.dedent(RULES_YAML), encoding="utf-8")
    (d / "cards.yaml").write_text(textwrap.dedent(CARDS_YAML), encoding="utf-8")
    p, problems = load_pack(d, KnowledgeCache(d / "knowledge"))
    assert p is not None, problems
    return p


def rule(pack: LoadedPack, rid: str) -> Any:
    return next(r for r in pack.rules if r.id == rid)


def med(ref: str | None = "MedicationRequest/d1", display: str = LONG, atc: list[str] | None = None, mg: float = 437.5) -> dict[str, Any]:
    return {"ref": ref, "name": "ibuprofen", "display": display, "atc": atc if atc is not None else ["M01AE01"], "dose": {"mg": mg}, "via": ["atc"]}


def finding(pack: LoadedPack, rid: str, severity: str = "warning", item: dict[str, Any] | None = None, line: int | None = None) -> Finding:
    return Finding(pack, rule(pack, rid), severity, {"item": item if item is not None else med(), "let": {}}, line)


class TestRenderCard:
    def test_summary_truncated_detail_not(self, pack: LoadedPack) -> None:
        card = render_card(finding(pack, "note"), "en", {}, [])
        short = LONG[: SUMMARY_TEXT - 1] + "…"
        assert card.summary == f"Note: {short} (437.5 mg)"
        assert card.detail == f"Full name: {LONG}; 437.5 mg"
        assert "…" not in card.detail
        assert card.indicator == "warning"

    def test_summary_nb(self, pack: LoadedPack) -> None:
        card = render_card(finding(pack, "note", item=med(display="Ibux", mg=437.55)), "nb", {}, [])
        assert card.summary == "Merknad: Ibux (437,55 mg)"
        assert card.detail == "Hele navnet: Ibux; 437,6 mg"
        assert card.source.label == "Kilde ibuprofen"
        assert card.overrideReasons is not None and card.overrideReasons[0].display == "Vil overvåke"

    def test_short_text_untouched(self, pack: LoadedPack) -> None:
        card = render_card(finding(pack, "note", item=med(display="x" * SUMMARY_TEXT)), "en", {}, [])
        assert card.summary == f"Note: {'x' * SUMMARY_TEXT} (437.5 mg)"

    def test_provenance(self, pack: LoadedPack) -> None:
        card = render_card(finding(pack, "note"), "en", {}, [{"table": "codes/x", "release": "1", "sha256": "0"}])
        prov = card.wire()["extension"][PROVENANCE]
        assert prov["rule"] == "note" and prov["pack"] == "test.cards" and prov["packVersion"] == "1.0.0"
        assert prov["packHash"] == pack.content_hash
        assert prov["subjects"] == ["MedicationRequest/d1"]
        assert prov["knowledge"] == []  # identified by ATC: no code-map provenance needed

    def test_code_map_provenance_for_name_matches(self, pack: LoadedPack) -> None:
        m = med() | {"via": ["name"]}
        card = render_card(finding(pack, "note", item=m), "en", {}, [{"table": "codes/x", "release": "1", "sha256": "0"}])
        assert card.wire()["extension"][PROVENANCE]["knowledge"] == [{"table": "codes/x", "release": "1", "sha256": "0"}]

    def test_list_placeholder_truncated_in_summary(self, pack: LoadedPack) -> None:
        codes = [f"N06AA{i:02d}" for i in range(1, 13)]  # 12 codes → 106 characters
        card = render_card(finding(pack, "codes", "info", item=med(atc=codes)), "en", {}, [])
        assert len(card.summary) <= len("Codes: ") + SUMMARY_TEXT


# --------------------------------------------------------------------------- select()


class TestSelect:
    def test_orders_by_urgency_stably(self, pack: LoadedPack) -> None:
        fs = [
            finding(pack, "note", "info", med("MedicationRequest/a")),
            finding(pack, "note", "warning", med("MedicationRequest/b")),
            finding(pack, "note", "critical", med("MedicationRequest/c")),
            finding(pack, "note", "warning", med("MedicationRequest/d")),
            finding(pack, "note", "info", med("MedicationRequest/e")),
            finding(pack, "note", "critical", med("MedicationRequest/f")),
        ]
        out = select(fs)
        assert [f.data["item"]["ref"][-1] for f in out] == ["c", "f", "b", "d", "a", "e"]

    def test_dedupe_keeps_most_urgent(self, pack: LoadedPack) -> None:
        w = finding(pack, "keyed-a", "warning")
        c = finding(pack, "keyed-b", "critical")
        assert dedupe_key(w) == dedupe_key(c) == "same:M01AE01"
        assert select([w, c]) == [c]
        assert select([c, w]) == [c]

    def test_dedupe_equal_urgency_keeps_first(self, pack: LoadedPack) -> None:
        a = finding(pack, "keyed-a", "warning")
        b = finding(pack, "keyed-b", "warning")
        out = select([a, b])
        assert len(out) == 1 and out[0] is a

    def test_dedupe_upgrade_keeps_first_position(self, pack: LoadedPack) -> None:
        first_info = finding(pack, "keyed-a", "info")
        other = finding(pack, "note", "critical", med("MedicationRequest/zz"))
        later_critical = finding(pack, "keyed-b", "critical")
        out = select([first_info, other, later_critical])
        assert out == [later_critical, other]  # the key's slot is its first appearance

    def test_default_key_separates_subjects_and_rows(self, pack: LoadedPack) -> None:
        a = finding(pack, "note", item=med("MedicationRequest/a"))
        b = finding(pack, "note", item=med("MedicationRequest/b"))
        a2 = finding(pack, "note", item=med("MedicationRequest/a"), line=7)
        assert len({dedupe_key(a), dedupe_key(b), dedupe_key(a2)}) == 3
        assert select([a, b, a2]) == [a, b, a2]
        same = finding(pack, "note", item=med("MedicationRequest/a"))
        assert select([a, same]) == [a]

    def test_different_keys_not_merged(self, pack: LoadedPack) -> None:
        x = finding(pack, "keyed-a", "warning", med(atc=["M01AE01"]))
        y = finding(pack, "keyed-a", "warning", med(atc=["N02BE01"]))
        assert select([x, y]) == [x, y]

    def test_empty(self) -> None:
        assert select([]) == []

    def test_distinct_medications_without_ids_not_merged(self, pack: LoadedPack) -> None:
        a = finding(pack, "note", item=med(None, display="Herbal drops A"))
        b = finding(pack, "note", item=med(None, display="Herbal drops B"))
        assert len(select([a, b])) == 2
