"""Medication code maps: ATC ↔ RxNorm ingredient, RxNorm products → ingredients, names → ATC.

The maps are knowledge tables (``knowledge/codes/*``) with a source on every row. A medication
is identified, in order of preference, by ATC, by RxNorm ingredient (IN), by RxNorm product
(SCD/SBD/…) mapped to its ingredients, and only as a last resort by its ingredient name found in
the text — which is flagged, so a rule or card can say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cds.engine.knowledge import KnowledgeCache, Table
from cds.yamlio import Problem

ATC_SYSTEMS = {"http://www.whocc.no/atc", "urn:oid:2.16.578.1.12.4.1.1.7180"}
RXNORM_SYSTEMS = {"http://www.nlm.nih.gov/research/umls/rxnorm"}

CODE_TABLES = ("codes/rxnorm-ingredients", "codes/rxnorm-products", "codes/atc-substances", "codes/observation-codes")

#: code systems of observation codings, by the short name the observation-codes table uses
OBS_SYSTEMS = {"http://snomed.info/sct": "snomed", "http://loinc.org": "loinc"}


@dataclass(frozen=True)
class Ingredient:
    name: str
    atc: str | None  # the primary ATC code (the record's own, else the first in the table)
    rxnorm: str | None
    via: str  # atc | rxnorm-in | rxnorm-product | name
    atcs: tuple[str, ...] = ()  # every ATC code of the ingredient (atc first)

    @property
    def all_atc(self) -> tuple[str, ...]:
        return self.atcs or ((self.atc,) if self.atc else ())


#: Dose-form words (English and Norwegian) that say a preparation is for local use. A medication
#: recognised only by its name cannot be given a local ATC code, and its ingredient's systemic code
#: would be wrong (ketoconazole shampoo is not systemic ketoconazole): such a text is left
#: unrecognised, so the record gets the "not checked" notice instead of a wrong interaction.
LOCAL_FORM_WORDS = re.compile(
    r"(?<![\w-])(shampoo|sjampo|cream|krem|ointment|salve|lotion|liniment|topical|kutan|utvortes|"
    r"eye ?drops?|øyedråper|ophthalmic|øye(?:salve|gel)|ear ?drops?|øredråper|otic|vaginal\w*|vagitor\w*|"
    r"nasal spray|nesespray|inhaler|inhalasjon\w*|inhalation|mouthwash|munnskyll\w*)(?![\w-])",
    re.IGNORECASE,
)


class CodeMaps:
    def __init__(self, tables: dict[str, Table]) -> None:
        self.tables = tables
        ing = tables.get("codes/rxnorm-ingredients")
        prod = tables.get("codes/rxnorm-products")
        subst = tables.get("codes/atc-substances")
        self._in: dict[str, dict[str, Any]] = {r["rxcui"]: r for r in (ing.rows if ing else [])}
        # an ingredient may have several ATC codes (methotrexate L01BA01 and L04AX03)
        self._atc_to_in: dict[str, str] = {}
        for r in ing.rows if ing else []:
            for a in r.get("atc") or []:
                self._atc_to_in.setdefault(a, r["rxcui"])
        obs = tables.get("codes/observation-codes")
        self._obs_keys: dict[tuple[str, str], str] = {(r["system"], r["code"]): r["key"] for r in (obs.rows if obs else [])}
        self._prod: dict[str, dict[str, Any]] = {r["rxcui"]: r for r in (prod.rows if prod else [])}
        self._atc_names: dict[str, str] = {}
        self._names: list[tuple[re.Pattern[str], str, str]] = []  # (pattern, atc, display name)
        for r in subst.rows if subst else []:
            self._atc_names[r["atc"]] = r["name_en"]
            names = {r["name_en"], r.get("name_nb") or "", *(r.get("synonyms") or [])}
            for n in sorted((n for n in names if n), key=len, reverse=True):
                self._names.append((re.compile(rf"(?<![\w-]){re.escape(n.lower())}(?![\w-])"), r["atc"], r["name_en"]))

    @classmethod
    def load(cls, cache: KnowledgeCache) -> tuple[CodeMaps, list[Problem]]:
        tables: dict[str, Table] = {}
        problems: list[Problem] = []
        for tid in CODE_TABLES:
            t, errs = cache.get(tid)
            problems.extend(errs)
            if t is not None:
                tables[tid] = t
        return cls(tables), problems

    def provenance(self) -> list[dict[str, str]]:
        return [t.provenance() for t in self.tables.values()]

    def atc_name(self, atc: str) -> str | None:
        return self._atc_names.get(atc)

    def obs_key(self, system: str | None, code: str | None) -> str | None:
        """The key an observation coding is filed under in the patient facts (``obs.<key>``): a
        LOINC code as is; another code (SNOMED CT) only through a row of codes/observation-codes."""
        short = OBS_SYSTEMS.get(system or "")
        if short is None or not code:
            return None
        return self._obs_keys.get((short, code)) or (code if short == "loinc" else None)

    def product_route(self, system: str | None, code: str | None) -> str | None:
        """Route keyword of an RxNorm product from its dose form (codes/rxnorm-products route)."""
        if system in RXNORM_SYSTEMS and code in self._prod:
            return self._prod[code].get("route") or None
        return None

    def _from_in(self, rx: str, via: str, first_atc: str | None = None) -> Ingredient:
        r = self._in[rx]
        atcs = list(r.get("atc") or [])
        if first_atc:
            atcs = [first_atc, *(a for a in atcs if a != first_atc)]
        return Ingredient(r["name"], atcs[0] if atcs else None, rx, via, tuple(atcs))

    def from_coding(self, system: str | None, code: str | None, display: str | None = None) -> list[Ingredient]:
        if not system or not code:
            return []
        if system in ATC_SYSTEMS:
            rx = self._atc_to_in.get(code)
            if rx is not None:
                # the record's ATC code is exact (it also says the use: D07AA02 is hydrocortisone
                # for the skin, H02AB09 systemic), so it is not widened to the ingredient's other codes
                name = self._atc_names.get(code) or self._in[rx]["name"]
                return [Ingredient(name, code, rx, "atc", (code,))]
            # an ATC code with no name in the tables keeps the record's own text, never the bare code
            name = self._atc_names.get(code) or (display.strip() if display and display.strip() else code)
            return [Ingredient(name, code, None, "atc", (code,))]
        if system in RXNORM_SYSTEMS:
            if code in self._in:
                return [self._from_in(code, "rxnorm-in")]
            if code in self._prod:
                prod = self._prod[code]
                ings = [self._from_in(rx, "rxnorm-product") for rx in prod["ingredients"] if rx in self._in]
                local = prod.get("atc") or []
                if local and len(ings) == 1:
                    # a product for local use (eye drops, skin cream) has its own ATC code, not the
                    # ingredient's systemic ones: ketoconazole shampoo is D01AC08, never J02AB02
                    i = ings[0]
                    return [Ingredient(i.name, local[0], i.rxnorm, i.via, tuple(local))]
                return ings
        return []

    def from_text(self, text: str | None) -> list[Ingredient]:
        if not text or LOCAL_FORM_WORDS.search(text):
            return []
        low = text.lower()
        # one ingredient per substance: a substance with several ATC codes (methotrexate
        # L01BA01/L04AX03, fentanyl N02AB03/N01AH01) has one name row per code
        found: dict[str, Ingredient] = {}
        for pat, atc, name in self._names:
            rx = self._atc_to_in.get(atc)
            key = rx or name.lower()
            known = found.get(key)
            if known is not None and atc in known.all_atc or not pat.search(low):
                continue
            if known is not None:
                found[key] = Ingredient(known.name, known.atc, rx, "name", (*known.all_atc, atc))
            else:
                atcs = self._from_in(rx, "name", first_atc=atc).atcs if rx else (atc,)
                found[key] = Ingredient(name, atc, rx, "name", atcs)
        return list(found.values())
