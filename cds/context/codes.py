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

CODE_TABLES = ("codes/rxnorm-ingredients", "codes/rxnorm-products", "codes/atc-substances")


@dataclass(frozen=True)
class Ingredient:
    name: str
    atc: str | None
    rxnorm: str | None
    via: str  # atc | rxnorm-in | rxnorm-product | name


class CodeMaps:
    def __init__(self, tables: dict[str, Table]) -> None:
        self.tables = tables
        ing = tables.get("codes/rxnorm-ingredients")
        prod = tables.get("codes/rxnorm-products")
        subst = tables.get("codes/atc-substances")
        self._in: dict[str, dict[str, Any]] = {r["rxcui"]: r for r in (ing.rows if ing else [])}
        self._atc_to_in: dict[str, str] = {r["atc"]: r["rxcui"] for r in (ing.rows if ing else []) if r.get("atc")}
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

    def from_coding(self, system: str | None, code: str | None) -> list[Ingredient]:
        if not system or not code:
            return []
        if system in ATC_SYSTEMS:
            rx = self._atc_to_in.get(code)
            name = self._atc_names.get(code) or (self._in[rx]["name"] if rx else code)
            return [Ingredient(name, code, rx, "atc")]
        if system in RXNORM_SYSTEMS:
            if code in self._in:
                r = self._in[code]
                return [Ingredient(r["name"], r.get("atc"), code, "rxnorm-in")]
            if code in self._prod:
                out = []
                for rx in self._prod[code]["ingredients"]:
                    r = self._in.get(rx)
                    if r is not None:
                        out.append(Ingredient(r["name"], r.get("atc"), rx, "rxnorm-product"))
                return out
        return []

    def from_text(self, text: str | None) -> list[Ingredient]:
        if not text:
            return []
        low = text.lower()
        found: dict[str, Ingredient] = {}
        for pat, atc, name in self._names:
            if atc not in found and pat.search(low):
                found[atc] = Ingredient(name, atc, self._atc_to_in.get(atc), "name")
        return list(found.values())
