"""FEST importer: the synthetic FEST-shaped file in tests/fixtures/fest/ (test data, not FEST content) is
imported into a temporary knowledge folder, a draft ``medication.fest`` pack is written over the generated
tables (pinning their SHA-256), and pack test cases run through the same pipeline as production."""

from __future__ import annotations

import csv
import shutil
import textwrap
from pathlib import Path

import pytest

from cds.cli import main
from cds.engine.knowledge import load_table
from cds.engine.registry import load_ruleset
from cds.knowledge.fest import FestError, import_fest, read_fest, table_prefix, write_fest_pack
from cds.testing.cases import load_cases, run_case

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "fest" / "fest-synthetic.xml"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def imported(tmp_path: Path) -> tuple[Path, str]:
    kdir = tmp_path / "knowledge"
    shutil.copytree(ROOT / "knowledge" / "codes", kdir / "codes")
    summary = import_fest(FIXTURE, kdir / "medication" / "fest")
    return kdir, summary


def test_tables_keep_fest_ids_release_and_relevance(imported: tuple[Path, str]) -> None:
    kdir, summary = imported
    rows = {r["id"]: r for r in _rows(kdir / "medication" / "fest" / "interactions.csv")}
    # FEST's own ids are the row ids; the file's HentetDato is the release
    r1 = rows["ID_SYNTH-INT-0001"]
    assert (r1["relevance"], r1["a_atc"], r1["b_atc"]) == ("1", "M04AA03", "L04AX01;L01BB02")
    assert r1["fest_oppf_id"] == "ID_SYNTH-OPPF-0001" and r1["relevance_dn"] == "Bør unngås"
    assert r1["evidence_nb"] == "Kasusrapporter" and r1["source_url"] == "https://example.org/synthetic-a"
    assert "HentetDato 2026-09-08T06:00:00" in r1["source"] and "ID_SYNTH-INT-0001" in r1["source"]
    # whitespace of the structured Handtering text is tidied, line breaks kept; English marked untranslated
    assert r1["management_nb"].splitlines() == [
        "Legemiddelalternativer: SYNTETISK TESTTEKST - velg et annet legemiddel.",
        "Monitorering: SYNTETISK TESTTEKST - blodtelling.",
    ]
    assert r1["consequence_en"].startswith("[nb, not translated] SYNTETISK")
    assert rows["ID_SYNTH-INT-0002"]["a_atc"] == "N06AB"  # ATC class kept as the class
    assert "Situasjonskriterium: SYNTETISK TESTTEKST: gjelder ved høye doser." in rows["ID_SYNTH-INT-0002"]["management_nb"]
    assert rows["ID_SYNTH-INT-0003"]["relevance"] == "3"
    # three substance groups -> one row per pair; the invalid ATC code is dropped
    assert {k for k in rows if k.startswith("ID_SYNTH-INT-0006")} == {f"ID_SYNTH-INT-0006#{i}" for i in (1, 2, 3)}
    assert rows["ID_SYNTH-INT-0006#3"]["b_atc"] == "C09AA02"
    # inactive entries, unknown Relevans and ATC-less groups are not imported - and the summary says so
    assert not any("0004" in k or "0005" in k or "0007" in k for k in rows)
    assert "inactive, not imported: 1" in summary
    assert "substances without an ATC code" in summary and "johannesurt" in summary
    assert "unknown Relevans: 1" in summary and "invalid ATC codes: 1" in summary
    assert "release '2026-09-08T06:00:00'" in summary
    na = _rows(kdir / "medication" / "fest" / "not-assessed.csv")
    assert [(r["atc"], r["fest_oppf_id"]) for r in na] == [("Z01AA01", "ID_SYNTH-OPPF-0008")]


def test_generated_tables_validate_as_knowledge(imported: tuple[Path, str]) -> None:
    kdir, _ = imported
    for name in ("interactions", "not-assessed"):
        table, problems = load_table(kdir, f"medication/fest/{name}")
        assert table is not None and not problems, problems
        assert table.release == "2026-09-08T06:00:00"
        assert all(r["source"] for r in table.rows)


CASES = textwrap.dedent(
    """
    hook: order-sign
    now: 2026-11-25T12:00:00Z
    locale: en
    cases:
      - name: FEST relevance 1 gives a critical card
        patient: {age: 60y, medications: [{id: aza, atc: L04AX01}]}
        orders: [{id: febu, atc: M04AA03}]
        expect:
          cards:
            - {rule: fest-interaction, indicator: critical, subjects: [febu, aza],
               summary: "Interaction: febuxostat + azathioprine – avoid", source_label: FEST (DMP)}
      - name: FEST relevance 2 on an ATC class gives a warning
        patient: {age: 60y, medications: [{id: ssri, atc: N06AB06}]}
        orders: [{id: ibu, rxnorm: "197805"}]
        expect:
          cards: [{rule: fest-interaction, indicator: warning, summary: "Interaction: sertraline + ibuprofen – take precautions"}]
      - name: FEST relevance 2 on patient-view is info
        hook: patient-view
        patient: {age: 60y, medications: [{id: li, atc: N05AN01}, {id: hctz, atc: C03AA03}]}
        expect:
          cards: [{rule: fest-interaction, indicator: info}]
      - name: FEST relevance 3 (no action needed) gives no card
        patient: {age: 60y, medications: [{id: para, atc: N02BE01}]}
        orders: [{id: amox, atc: J01CA04}]
        expect: {cards: []}
      - name: an inactive FEST entry gives no card
        patient: {age: 60y, medications: [{id: para, atc: N02BE01}]}
        orders: [{id: metf, atc: A10BA02}]
        expect: {cards: []}
      - name: a substance FEST has not assessed gives a not-assessed card, not silence
        patient: {age: 60y, medications: [{id: para, atc: N02BE01}]}
        orders: [{id: new, atc: Z01AA01, text: Synthetic new drug 10 mg}]
        expect:
          cards:
            - {rule: fest-not-assessed, indicator: info, summary: "Synthetic new drug 10 mg: not assessed for interactions in FEST",
               detail_contains: "has **not assessed** Synthetic new drug 10 mg (ATC Z01AA01)"}
      - name: Norwegian not-assessed text
        locale: nb
        patient: {age: 60y}
        orders: [{id: new, atc: Z01AA01}]
        expect:
          cards: [{rule: fest-not-assessed, summary: "Z01AA01: ikke vurdert for interaksjoner i FEST"}]
    """
)


def test_draft_pack_over_imported_tables_runs_cases(imported: tuple[Path, str], tmp_path: Path) -> None:
    kdir, _ = imported
    pack_dir = write_fest_pack(tmp_path / "rules" / "medication" / "fest-1.0", kdir, "medication/fest")
    (pack_dir / "tests" / "fest.yaml").write_text(CASES, encoding="utf-8")
    (tmp_path / "hooks").mkdir()
    rs, problems = load_ruleset(tmp_path / "hooks", tmp_path / "rules", kdir)
    assert rs is not None, [str(p) for p in problems]
    pack = rs.packs["medication.fest"]["1.0.0"]
    assert pack.manifest.status == "draft"
    assert {k.table: k.release for k in pack.manifest.knowledge} == {
        "medication/fest/interactions": "2026-09-08T06:00:00",
        "medication/fest/not-assessed": "2026-09-08T06:00:00",
    }
    cases, case_problems = load_cases(pack_dir / "tests" / "fest.yaml")
    assert not case_problems and len(cases) == 7
    results = [run_case(rs, pack, c) for c in cases]
    failures = {r.case.name: r.failures for r in results if not r.passed}
    assert not failures, failures
    # "not assessed" is never presented as "no interaction"
    for r in results:
        for card in r.cards:
            assert "no interaction" not in (card["summary"] + (card.get("detail") or "")).lower()


def test_pinned_tables_change_means_checksum_mismatch(imported: tuple[Path, str], tmp_path: Path) -> None:
    kdir, _ = imported
    write_fest_pack(tmp_path / "rules" / "fest", kdir, "medication/fest")
    csv_path = kdir / "medication" / "fest" / "interactions.csv"
    csv_path.write_text(csv_path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    (tmp_path / "hooks").mkdir()
    rs, problems = load_ruleset(tmp_path / "hooks", tmp_path / "rules", kdir)
    assert rs is None and any("checksum mismatch" in p.message for p in problems)


@pytest.mark.parametrize(
    "content, message",
    [
        ("<FEST><HentetDato>2026-01-01", "not well-formed XML"),
        ("<Other/>", "not a FEST file"),
        ("<FEST><KatInteraksjon/></FEST>", "no <HentetDato>"),
        ("<FEST><HentetDato>2026-01-01T00:00:00</HentetDato></FEST>", "no <KatInteraksjon>"),
    ],
)
def test_bad_files_raise_fest_error(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(FestError, match=message):
        import_fest(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "interactions.csv").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FestError, match="file not found"):
        import_fest(tmp_path / "nope.xml", tmp_path / "out")


def test_streams_large_catalogues(tmp_path: Path) -> None:
    """Thousands of entries, most in other catalogues, are read entry by entry."""
    oppf = (
        "<OppfInteraksjon><Id>ID_{i}</Id><Tidspunkt>2026-01-01T00:00:00</Tidspunkt><Status V=\"A\"/>"
        "<Interaksjon><Id>INT_{i}</Id><Relevans V=\"2\" DN=\"Forholdsregler bør tas\"/>"
        "<KliniskKonsekvens>x</KliniskKonsekvens><Handtering>y</Handtering>"
        "<Substansgruppe><Substans><Atc V=\"N06AB06\"/></Substans></Substansgruppe>"
        "<Substansgruppe><Substans><Atc V=\"M01AE01\"/></Substans></Substansgruppe></Interaksjon></OppfInteraksjon>"
    )
    pakning = "<OppfLegemiddelpakning><Id>P{i}</Id><Status V=\"A\"/><Legemiddelpakning><Navn>z</Navn></Legemiddelpakning></OppfLegemiddelpakning>"
    big = tmp_path / "big.xml"
    with big.open("w", encoding="utf-8") as f:
        f.write('<FEST xmlns="http://www.kith.no/xmlstds/eresept/m30/2014-12-01"><HentetDato>2026-10-01T00:00:00</HentetDato>')
        f.write("<KatLegemiddelpakning>" + "".join(pakning.format(i=i) for i in range(20000)) + "</KatLegemiddelpakning>")
        f.write("<KatInteraksjon>" + "".join(oppf.format(i=i) for i in range(3000)) + "</KatInteraksjon></FEST>")
    imp = read_fest(big)
    assert imp.entries == 3000 and len(imp.interactions) == 3000 and imp.release == "2026-10-01T00:00:00"


def test_table_prefix() -> None:
    assert table_prefix(Path("/x/knowledge/medication/fest")) == "medication/fest"
    assert table_prefix(Path("/x/somewhere/fest")) == "fest"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "knowledge" / "medication" / "fest"
    assert main(["knowledge", "import-fest", str(FIXTURE), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "medication/fest/interactions: 6 rows (relevance 1: 1, 2: 4, 3: 1)" in printed
    assert "medication/fest/not-assessed: 1 ATC codes not assessed" in printed
    bad = tmp_path / "bad.xml"
    bad.write_text("<nope/>", encoding="utf-8")
    assert main(["knowledge", "import-fest", str(bad), "--out", str(out)]) == 1
    assert "not a FEST file" in capsys.readouterr().err
