"""The bundled code maps cover every drug of the interaction pack.

Issue #5 asks for an ATC ↔ RxNorm ingredient map for every drug in the pack and RxNorm products
for common products of those drugs, so US-coded records (RxNorm products) and Norwegian ones (ATC)
both work. These tests read the shipped knowledge tables: a drug added to the pack without a
verified RxNorm ingredient, or a product row pointing at an unknown ingredient, fails here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cds.context.codes import CodeMaps
from cds.engine.knowledge import KnowledgeCache

ROOT = Path(__file__).resolve().parents[1]
KNOWLEDGE = ROOT / "knowledge"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"

#: Level-5 ATC codes of the pack with no RxNorm ingredient, and why. Each was looked up in
#: RxNorm-derived sources (see the session notes of issue #5); none may be guessed.
NO_RXNORM_INGREDIENT = {
    "A03FA02": "cisapride: withdrawn, not in the current RxNorm ingredient list",
    "A03FA03": "domperidone: not marketed in the US; no source names its RxCUI",
    "C10AX02": "probucol: withdrawn, not in the current RxNorm ingredient list",
    "G02AB03": "ergometrine (ergonovine): not in the current RxNorm ingredient list",
    "J01FA08": "troleandomycin: withdrawn, not in the current RxNorm ingredient list",
    "J01FA15": "telithromycin: withdrawn, not in the current RxNorm ingredient list",
    "J01MA09": "sparfloxacin: withdrawn; RxCUI not found in a stored RxNorm-derived source",
    "J05AE05": "amprenavir: withdrawn; RxCUI not found in a stored RxNorm-derived source",
    "L01XX27": "arsenic trioxide: the only sources found disagree (115698 vs 17419); neither used",
    "N05AC03": "mesoridazine: withdrawn; RxCUI not found in a stored RxNorm-derived source",
    "N05AL01": "sulpiride: not marketed in the US, not in the current RxNorm ingredient list",
    "N07BC03": "levacetylmethadol: withdrawn, not in the current RxNorm ingredient list",
    # combination ATC codes have no single ingredient; their products map to each ingredient
    "N02AX52": "tramadol, combinations (combination code)",
    "N02CA51": "dihydroergotamine, combinations (combination code)",
    "N02CA52": "ergotamine, combinations excl. psycholeptics (combination code)",
    "J05AR10": "lopinavir and ritonavir (combination code; products map to lopinavir + ritonavir)",
}
#: ATC classes of combination products only: records coded with them match the class; RxNorm
#: products of such combinations map to each single ingredient, which the single-substance
#: classes of the same row match.
COMBINATION_CLASSES = {
    "C03AB": "thiazides and potassium in combination",
    "C03EA": "low-ceiling diuretics and potassium-sparing agents",
    "C09B": "ACE inhibitors, combinations",
    "C09D": "angiotensin II receptor blockers, combinations",
}
#: Drugs with an ingredient row but no verified product row.
NO_PRODUCT = {
    "C08EA02": "bepridil: withdrawn; no RxNorm product found in a stored source",
    "N06AG02": "moclobemide: not marketed in the US; no RxNorm product",
    "N06AX25": "St John's wort: no RxNorm product found",
}


def _rows(table: str) -> list[dict[str, str]]:
    with (KNOWLEDGE / f"{table}.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _pack_drugs() -> set[str]:
    """Every level-5 ATC code the interaction pack names, classes expanded over the ATC table."""
    names = {r["atc"] for r in _rows("codes/atc-substances")}
    codes: set[str] = set()
    for table in ("medication/interaction-pairs", "medication/simvastatin-dose-caps", "medication/warfarin-nsaid"):
        for r in _rows(table):
            for col, v in r.items():
                if col and "atc" in col and v:
                    codes.update(c.strip() for c in v.split(";") if c.strip())
    drugs = {c for c in codes if len(c) == 7}
    for c in codes - drugs:
        members = {a for a in names if a.startswith(c)}
        assert members or c in COMBINATION_CLASSES, f"class {c} has no member in codes/atc-substances"
        drugs |= members
    return drugs


@pytest.fixture(scope="module")
def maps() -> CodeMaps:
    m, problems = CodeMaps.load(KnowledgeCache(KNOWLEDGE))
    assert not [p for p in problems if p.severity == "error"], problems
    return m


def test_every_pack_drug_has_a_name(maps: CodeMaps) -> None:
    missing = sorted(a for a in _pack_drugs() if maps.atc_name(a) is None)
    assert not missing, f"ATC codes used by the pack without a row in codes/atc-substances: {missing}"


def test_every_pack_drug_maps_to_an_rxnorm_ingredient_or_is_a_listed_exception(maps: CodeMaps) -> None:
    unmapped = {a for a in _pack_drugs() if not any(i.rxnorm for i in maps.from_coding(ATC, a))}
    assert unmapped == set(NO_RXNORM_INGREDIENT), (
        f"new gaps: {sorted(unmapped - set(NO_RXNORM_INGREDIENT))}; "
        f"now mapped (remove from the exception list): {sorted(set(NO_RXNORM_INGREDIENT) - unmapped)}"
    )


def test_rxnorm_ingredients_map_back_to_the_same_atc(maps: CodeMaps) -> None:
    rows = _rows("codes/rxnorm-ingredients")
    for r in rows:
        if not r["atc"]:
            continue
        (ing,) = maps.from_coding(RXNORM, r["rxcui"])
        assert list(ing.all_atc) == r["atc"].split(";"), r
        for atc in r["atc"].split(";"):
            (back,) = maps.from_coding(ATC, atc)
            if back.rxnorm != r["rxcui"]:  # an ATC shared by two ingredient rows maps to the first
                assert any(x["rxcui"] == back.rxnorm and atc in x["atc"].split(";") for x in rows)


def test_every_product_resolves_to_all_its_ingredients(maps: CodeMaps) -> None:
    ingredients = {r["rxcui"] for r in _rows("codes/rxnorm-ingredients")}
    for r in _rows("codes/rxnorm-products"):
        listed = r["ingredients"].split(";")
        assert set(listed) <= ingredients, r  # a product never maps to part of its ingredients
        assert [i.rxnorm for i in maps.from_coding(RXNORM, r["rxcui"])] == listed


def test_common_products_exist_for_the_pack_drugs(maps: CodeMaps) -> None:
    by_ingredient: dict[str, int] = {}
    for r in _rows("codes/rxnorm-products"):
        for i in r["ingredients"].split(";"):
            by_ingredient[i] = by_ingredient.get(i, 0) + 1
    without = set()
    for atc in _pack_drugs() - set(NO_RXNORM_INGREDIENT):
        rx = {i.rxnorm for i in maps.from_coding(ATC, atc) if i.rxnorm}
        if not any(by_ingredient.get(x) for x in rx) and atc != "J01EE01":  # J01EE01: MIN, products map to SMX + TMP
            without.add(atc)
    assert without == set(NO_PRODUCT), f"new: {sorted(without - set(NO_PRODUCT))}; resolved: {sorted(set(NO_PRODUCT) - without)}"


LOCAL_FORM = ("ophthalmic", "otic", "shampoo", "topical", "vaginal", " cream", "ointment", "lotion")
#: ATC groups for systemic use that interaction, dosing and pathway rules match on
SYSTEMIC = ("H02", "J01", "J02", "J04", "J05", "M01", "L04", "N02", "C01", "B01")


def test_products_for_local_use_never_carry_a_systemic_atc(maps: CodeMaps) -> None:
    """Ketoconazole shampoo is not systemic ketoconazole, hydrocortisone cream not a systemic
    corticosteroid: local products carry their own ATC (D01AC08, D07AA02) or are not listed."""
    checked = 0
    for r in _rows("codes/rxnorm-products"):
        name = r["name"].lower()
        if not any(w in name for w in LOCAL_FORM) or "transdermal" in name:
            continue
        checked += 1
        atcs = [a for i in maps.from_coding(RXNORM, r["rxcui"]) for a in i.all_atc]
        assert not [a for a in atcs if a.startswith(SYSTEMIC)], (r["rxcui"], r["name"], atcs)
    assert checked > 30


def test_local_atc_only_on_single_ingredient_products() -> None:
    for r in _rows("codes/rxnorm-products"):
        if r["atc"]:
            assert ";" not in r["ingredients"], r
