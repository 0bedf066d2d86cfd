"""FEST interaction catalogue (DMP, Norway) -> knowledge tables for the interaction rules.

``cds knowledge import-fest FILE.xml --out DIR`` reads FEST's ``KatInteraksjon`` and writes two knowledge tables
into DIR (CSV + ``.meta.yaml``):

``interactions``
    One row per pair of substance groups of an ``Interaksjon``, in the column format of
    ``knowledge/medication/interaction-pairs`` (``a_atc``/``b_atc`` ATC codes or classes, FEST ``Relevans`` as
    ``relevance`` 1/2/3, consequence and management texts) plus FEST's own ids and texts. FEST's texts are
    Norwegian only: the ``*_en`` columns repeat the Norwegian text, marked as not translated.
``not-assessed``
    One row per ATC code listed in an ``InteraksjonIkkeVurdert``: substances DMP has *not assessed* for
    interactions. Rules must say "not assessed" for them, never "no interaction".

The file's ``HentetDato`` is the knowledge release of both tables; FEST's ids (``OppfInteraksjon/Id``,
``Interaksjon/Id``) are kept on every row. Only active entries (``Status V="A"``) are imported. What cannot
be keyed by ATC (a substance group whose substances have no ATC code, e.g. herbal products identified only by
``RefVirkestoff``) is left out and counted in the summary - the summary says what was not imported.

The real file is ~120 MB: it is read with ``xml.etree.ElementTree.iterparse`` and every catalogue entry is
discarded once read, so memory stays small. Element names are matched on their local name, so the FEST/M30
and forskrivning namespaces (``http://www.kith.no/xmlstds/eresept/m30/2014-12-01``,
``http://www.kith.no/xmlstds/eresept/forskrivning/2014-12-01``) and their prefixes do not matter.

:func:`write_fest_pack` writes a draft rule pack (``medication.fest``) that pins the imported tables.
"""

from __future__ import annotations

import csv
import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Iterator

from cds.engine.knowledge import ATC_RE

ATC_OID = "2.16.578.1.12.4.1.1.7180"
DMP_SEARCH_URL = "https://www.legemiddelsok.no/sider/Interaksjoner.aspx"
UNTRANSLATED = "[nb, not translated] "
ACTIONS = {
    "1": ("avoid", "bør unngås"),
    "2": ("take precautions", "forholdsregler bør tas"),
    "3": ("no action needed", "ingen tiltak nødvendig"),
}
INTERACTION_COLUMNS = [
    "id", "catalogue", "a_atc", "b_atc", "relevance", "action_en", "action_nb", "consequence_en", "consequence_nb",
    "management_en", "management_nb", "switch_side", "alt_atc", "alt_name_en", "alt_name_nb", "source_label",
    "source_url", "source", "alternative",
    "fest_oppf_id", "fest_interaksjon_id", "fest_tidspunkt", "relevance_dn", "mechanism_nb", "evidence_nb",
    "a_substances", "b_substances",
]
NOT_ASSESSED_COLUMNS = ["id", "atc", "name", "fest_oppf_id", "fest_tidspunkt", "source"]


class FestError(Exception):
    """The file is not a FEST file this importer can read (the message says why)."""


@dataclass
class FestImport:
    release: str
    interactions: list[dict[str, str]] = field(default_factory=list)
    not_assessed: list[dict[str, str]] = field(default_factory=list)
    entries: int = 0
    inactive: int = 0
    invalid_relevance: list[str] = field(default_factory=list)
    no_atc_groups: list[str] = field(default_factory=list)  # "interaksjon id: substance names"
    invalid_atc: list[str] = field(default_factory=list)
    empty_entries: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"1": 0, "2": 0, "3": 0}
        for r in self.interactions:
            out[r["relevance"]] += 1
        return out


# ------------------------------------------------------------------ XML helpers


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ET.Element | None) -> str:
    """Text of an element (with its sub-elements' text, e.g. structured Handtering), whitespace tidied:
    runs of blanks collapsed, empty lines dropped, line breaks kept."""
    if el is None:
        return ""
    raw = "".join(el.itertext())
    lines = [re.sub(r"[ \t\r\f\v]+", " ", ln).strip() for ln in raw.split("\n")]
    return "\n".join(ln for ln in lines if ln)


def _code(el: ET.Element | None) -> tuple[str, str]:
    """(V, DN) of a coded element (CS/CV), or ("", "")."""
    if el is None:
        return "", ""
    return (el.get("V") or "").strip(), (el.get("DN") or "").strip()


# ------------------------------------------------------------------ reading


def _entries(xml_path: Path, result: dict[str, Any]) -> Iterator[ET.Element]:
    """Stream the OppfInteraksjon elements; record HentetDato; drop every catalogue entry after use."""
    stack: list[ET.Element] = []
    try:
        for event, el in ET.iterparse(str(xml_path), events=("start", "end")):
            if event == "start":
                if not stack and _local(el.tag) != "FEST":
                    raise FestError(f"the root element is <{_local(el.tag)}>, not <FEST>: not a FEST file")
                stack.append(el)
                continue
            stack.pop()
            depth = len(stack)  # 0 = root, 1 = catalogue (Kat*) or HentetDato, 2 = catalogue entry
            name = _local(el.tag)
            if depth == 1 and name == "HentetDato":
                result["hentet"] = (el.text or "").strip()
            elif depth == 1 and name == "KatInteraksjon":
                result["kat"] = True
            elif depth == 2:
                if name == "OppfInteraksjon" and _local(stack[-1].tag) == "KatInteraksjon":
                    yield el
                stack[-1].remove(el)  # keep memory flat on the 120 MB file
    except ET.ParseError as e:
        raise FestError(f"not well-formed XML: {e}") from e
    except OSError as e:
        raise FestError(f"cannot read the file: {e}") from e


def read_fest(xml_path: Path) -> FestImport:
    meta: dict[str, Any] = {}
    rows: list[dict[str, str]] = []
    not_assessed: list[dict[str, str]] = []
    imp = FestImport(release="")
    for oppf in _entries(xml_path, meta):
        imp.entries += 1
        oppf_id = _text(_child(oppf, "Id"))
        tidspunkt = _text(_child(oppf, "Tidspunkt"))
        status, _ = _code(_child(oppf, "Status"))
        if status != "A":
            imp.inactive += 1
            continue
        inter = _child(oppf, "Interaksjon")
        ikke = _child(oppf, "InteraksjonIkkeVurdert")
        if inter is not None:
            rows.extend(_interaction(imp, inter, oppf_id, tidspunkt))
        elif ikke is not None:
            for atc_el in (e for e in ikke.iter() if _local(e.tag) == "Atc"):
                atc, dn = _code(atc_el)
                if not ATC_RE.match(atc):
                    imp.invalid_atc.append(f"{oppf_id}: {atc!r}")
                    continue
                not_assessed.append({
                    "id": f"{oppf_id}:{atc}", "atc": atc, "name": dn or atc, "fest_oppf_id": oppf_id,
                    "fest_tidspunkt": tidspunkt, "source": "",
                })
        else:
            imp.empty_entries.append(oppf_id)
    if "hentet" not in meta or not meta["hentet"]:
        raise FestError("no <HentetDato>: the file's date is needed as the knowledge release")
    if not meta.get("kat"):
        raise FestError("no <KatInteraksjon> catalogue in the file")
    imp.release = meta["hentet"]
    src = f"FEST interaction catalogue (DMP), file HentetDato {imp.release}"
    for r in rows:
        r["source"] = (
            f"{src}; OppfInteraksjon {r['fest_oppf_id']} ({r['fest_tidspunkt']}), Interaksjon {r['fest_interaksjon_id']}; "
            f"Relevans {r['relevance']} {r['relevance_dn']}; Kildegrunnlag: {r['evidence_nb'] or 'not given'}"
            + (f"; references: {r['source']}" if r["source"] else "")
        )
    for r in not_assessed:
        r["source"] = f"{src}; OppfInteraksjon {r['fest_oppf_id']} ({r['fest_tidspunkt']}): InteraksjonIkkeVurdert (not assessed by DMP)"
    imp.interactions = rows
    imp.not_assessed = not_assessed
    return imp


def _interaction(imp: FestImport, inter: ET.Element, oppf_id: str, tidspunkt: str) -> list[dict[str, str]]:
    iid = _text(_child(inter, "Id")) or oppf_id
    rel, rel_dn = _code(_child(inter, "Relevans"))
    if rel not in ACTIONS:
        imp.invalid_relevance.append(f"{iid}: {rel!r}")
        return []
    groups: list[tuple[list[str], list[str]]] = []  # (ATC codes, substance names) per Substansgruppe
    for g in _children(inter, "Substansgruppe"):
        codes: list[str] = []
        names: list[str] = []
        without: list[str] = []
        for s in _children(g, "Substans"):
            sname = _text(_child(s, "Substans"))
            atc, dn = _code(_child(s, "Atc"))
            if atc and ATC_RE.match(atc):
                if atc not in codes:
                    codes.append(atc)
                names.append(sname or dn or atc)
            elif atc:
                imp.invalid_atc.append(f"{iid}: {atc!r} ({sname or dn or 'unnamed'})")
            else:
                without.append(sname or _text(_child(g, "Navn")) or "(unnamed)")
        if without:
            imp.no_atc_groups.append(f"{iid}: {', '.join(without)}")
        groups.append((codes, names))
    keyed = [g for g in groups if g[0]]
    if len(keyed) < 2:
        return []
    consequence = _text(_child(inter, "KliniskKonsekvens"))
    handling = _text(_child(inter, "Handtering"))
    situations = [_text(s) for s in _children(inter, "Situasjonskriterium") if _text(s)]
    if situations:
        handling = (handling + "\n\n" if handling else "") + "Situasjonskriterium: " + " / ".join(situations)
    _, evidence = _code(_child(inter, "Kildegrunnlag"))
    refs = []
    link = ""
    for ref in _children(inter, "Referanse"):
        kilde = _text(_child(ref, "Kilde"))
        lenke_el = _child(ref, "Lenke")
        lenke = (lenke_el.get("V") or _text(lenke_el)).strip() if lenke_el is not None else ""
        if kilde:
            refs.append(kilde)
        link = link or lenke
    pairs = list(combinations(keyed, 2))
    out = []
    for k, (ga, gb) in enumerate(pairs, start=1):
        act_en, act_nb = ACTIONS[rel]
        out.append({
            "id": iid if len(pairs) == 1 else f"{iid}#{k}",
            "catalogue": "fest", "a_atc": ";".join(ga[0]), "b_atc": ";".join(gb[0]), "relevance": rel,
            "action_en": act_en, "action_nb": act_nb,
            "consequence_nb": consequence or "(ingen klinisk konsekvens oppgitt)",
            "consequence_en": UNTRANSLATED + (consequence or "(ingen klinisk konsekvens oppgitt)"),
            "management_nb": handling or "(ingen håndtering oppgitt)",
            "management_en": UNTRANSLATED + (handling or "(ingen håndtering oppgitt)"),
            "switch_side": "", "alt_atc": "", "alt_name_en": "", "alt_name_nb": "",
            "source_label": "FEST (DMP)", "source_url": link or DMP_SEARCH_URL,
            "source": "; ".join(refs), "alternative": "",
            "fest_oppf_id": oppf_id, "fest_interaksjon_id": iid, "fest_tidspunkt": tidspunkt,
            "relevance_dn": rel_dn, "mechanism_nb": _text(_child(inter, "Interaksjonsmekanisme")),
            "evidence_nb": evidence, "a_substances": ", ".join(ga[1]), "b_substances": ", ".join(gb[1]),
        })
    return out


# ------------------------------------------------------------------ writing


def table_prefix(out_dir: Path) -> str:
    """The knowledge-table id prefix of ``out_dir``: its path below the nearest folder named ``knowledge``
    (``knowledge/medication/fest`` -> ``medication/fest``); without one, the folder's own name."""
    parts = out_dir.resolve().parts
    if "knowledge" in parts:
        i = len(parts) - 1 - parts[::-1].index("knowledge")
        rel = parts[i + 1 :]
        if rel:
            return "/".join(rel)
    return out_dir.resolve().name


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})


def _interactions_meta(table_id: str, release: str) -> str:
    return f"""id: {table_id}
title: FEST interaction catalogue (DMP) - interaction pairs by ATC
release: {_yaml_str(release)}
publisher: Direktoratet for medisinske produkter (DMP), FEST; converted by cds knowledge import-fest
description: >
  Generated from FEST KatInteraksjon (file HentetDato {release}); do not edit by hand - re-import instead.
  One row per pair of substance groups of an Interaksjon; relevance = FEST Relevans (1 Bør unngås, 2
  Forholdsregler bør tas, 3 Ingen tiltak nødvendig). FEST texts are Norwegian: the *_en columns repeat the
  Norwegian text, marked "{UNTRANSLATED.strip()}". Only active entries (Status A) are included.
key: id
columns:
  id: {{type: code, required: true, unique: true, description: "FEST Interaksjon Id (#n when it has more than two substance groups)"}}
  catalogue: {{type: enum, required: true, values: [fest]}}
  a_atc: {{type: atc_list, required: true}}
  b_atc: {{type: atc_list, required: true}}
  relevance: {{type: enum, required: true, values: ["1", "2", "3"]}}
  action_en: {{type: text, required: true}}
  action_nb: {{type: text, required: true}}
  consequence_en: {{type: text, required: true}}
  consequence_nb: {{type: text, required: true}}
  management_en: {{type: text, required: true}}
  management_nb: {{type: text, required: true}}
  switch_side: {{type: enum, values: [a, b]}}
  alt_atc: {{type: atc}}
  alt_name_en: {{type: text}}
  alt_name_nb: {{type: text}}
  source_label: {{type: text, required: true}}
  source_url: {{type: text, required: true}}
  source: {{type: text, required: true}}
  alternative: {{type: text}}
  fest_oppf_id: {{type: code, required: true}}
  fest_interaksjon_id: {{type: code, required: true}}
  fest_tidspunkt: {{type: text}}
  relevance_dn: {{type: text}}
  mechanism_nb: {{type: text}}
  evidence_nb: {{type: text, description: "FEST Kildegrunnlag"}}
  a_substances: {{type: text}}
  b_substances: {{type: text}}
"""


def _not_assessed_meta(table_id: str, release: str) -> str:
    return f"""id: {table_id}
title: FEST - substances not assessed for interactions (InteraksjonIkkeVurdert)
release: {_yaml_str(release)}
publisher: Direktoratet for medisinske produkter (DMP), FEST; converted by cds knowledge import-fest
description: >
  Generated from FEST KatInteraksjon (file HentetDato {release}). ATC codes DMP has NOT assessed for
  interactions: an absent warning for them must be reported as "not assessed", never as "no interaction".
key: id
columns:
  id: {{type: code, required: true, unique: true}}
  atc: {{type: atc, required: true}}
  name: {{type: text, required: true}}
  fest_oppf_id: {{type: code, required: true}}
  fest_tidspunkt: {{type: text}}
  source: {{type: text, required: true}}
"""


def import_fest(xml_path: Path, out_dir: Path) -> str:
    """Convert FEST's interaction catalogue into knowledge tables in ``out_dir``; returns a summary."""
    xml_path = Path(xml_path)
    out_dir = Path(out_dir)
    if not xml_path.is_file():
        raise FestError("file not found")
    imp = read_fest(xml_path)
    prefix = table_prefix(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_csv(out_dir / "interactions.csv", INTERACTION_COLUMNS, imp.interactions)
        (out_dir / "interactions.meta.yaml").write_text(_interactions_meta(f"{prefix}/interactions", imp.release), encoding="utf-8")
        _write_csv(out_dir / "not-assessed.csv", NOT_ASSESSED_COLUMNS, imp.not_assessed)
        (out_dir / "not-assessed.meta.yaml").write_text(_not_assessed_meta(f"{prefix}/not-assessed", imp.release), encoding="utf-8")
    except OSError as e:
        raise FestError(f"cannot write to {out_dir}: {e}") from e
    c = imp.counts()
    lines = [
        f"FEST interaction catalogue, HentetDato {imp.release} (knowledge release {imp.release!r})",
        f"  entries read: {imp.entries} (inactive, not imported: {imp.inactive})",
        f"  {prefix}/interactions: {len(imp.interactions)} rows (relevance 1: {c['1']}, 2: {c['2']}, 3: {c['3']})",
        f"  {prefix}/not-assessed: {len(imp.not_assessed)} ATC codes not assessed by DMP",
    ]
    if imp.no_atc_groups:
        lines.append(
            f"  NOT IMPORTED - substances without an ATC code (cannot be matched by ATC): {len(imp.no_atc_groups)}: "
            + "; ".join(imp.no_atc_groups[:10]) + (" ..." if len(imp.no_atc_groups) > 10 else "")
        )
    if imp.invalid_relevance:
        lines.append(f"  NOT IMPORTED - unknown Relevans: {len(imp.invalid_relevance)}: " + "; ".join(imp.invalid_relevance[:10]))
    if imp.invalid_atc:
        lines.append(f"  NOT IMPORTED - invalid ATC codes: {len(imp.invalid_atc)}: " + "; ".join(imp.invalid_atc[:10]))
    if imp.empty_entries:
        lines.append(f"  NOT IMPORTED - entries with neither Interaksjon nor InteraksjonIkkeVurdert: {len(imp.empty_entries)}")
    lines.append(f"  written to {out_dir}")
    return "\n".join(lines)


# ------------------------------------------------------------------ a draft pack for the imported tables


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _release(meta_path: Path) -> str:
    m = re.search(r'^release:\s*"?(.*?)"?\s*$', meta_path.read_text(encoding="utf-8"), re.M)
    if not m:
        raise FestError(f"{meta_path}: no release")
    return m.group(1)


FEST_RULES = """# Generated by cds.knowledge.fest.write_fest_pack: rules over FEST's interaction catalogue.
# Severity: order hooks 1 -> critical, 2 -> warning; patient-view 1 -> warning, 2 -> info; 3 -> no card.
rules:
  - id: fest-interaction
    title: {{nb: Interaksjon (FEST), en: Interaction (FEST)}}
    hooks: [order-select, order-sign, patient-view]
    pair: {{table: {prefix}/interactions, a: a_atc, b: b_atc}}
    let:
      pair: {{if: [{{"<": [{{var: a.key}}, {{var: b.key}}]}}, {{cat: [{{var: a.key}}, "|", {{var: b.key}}]}}, {{cat: [{{var: b.key}}, "|", {{var: a.key}}]}}]}}
    severity:
      if:
        - {{"==": [{{var: row.relevance}}, "1"]}}
        - {{if: [{{"==": [{{var: hook}}, patient-view]}}, warning, critical]}}
        - {{"==": [{{var: row.relevance}}, "2"]}}
        - {{if: [{{"==": [{{var: hook}}, patient-view]}}, info, warning]}}
        - none
    card: fest-interaction
    dedupe: "ddi:{{{{ let.pair }}}}"
    references: [fest]

  - id: fest-not-assessed
    title: {{nb: Ikke vurdert for interaksjoner (FEST), en: Not assessed for interactions (FEST)}}
    hooks: [order-select, order-sign, patient-view]
    for_each: meds.focus
    table: {{table: {prefix}/not-assessed, column: atc}}
    severity: info
    card: fest-not-assessed
    dedupe: "fest-not-assessed:{{{{ item.key }}}}"
    references: [fest]
"""

FEST_CARDS = """cards:
  fest-interaction:
    summary:
      nb: "Interaksjon: {{ a.name }} + {{ b.name }} – {{ row.action_nb }}"
      en: "Interaction: {{ a.name }} + {{ b.name }} – {{ row.action_en }}"
    detail:
      nb: "**{{ a.display }}** + **{{ b.display }}**: {{ row.consequence_nb }}\\n\\n**Håndtering:** {{ row.management_nb }}"
      en: "**{{ a.display }}** + **{{ b.display }}**: {{ row.consequence_en }}\\n\\n**Management:** {{ row.management_en }}"
    source:
      label: "FEST (DMP)"
      url: "{{ row.source_url }}"
    override_reasons: [benefit-outweighs-risk, will-monitor, already-tolerated, not-relevant]
  fest-not-assessed:
    summary:
      nb: "{{ item.name }}: ikke vurdert for interaksjoner i FEST"
      en: "{{ item.name }}: not assessed for interactions in FEST"
    detail:
      nb: "DMP har **ikke vurdert** {{ item.display }} (ATC {{ row.atc }}) for interaksjoner. Interaksjonssjekken er derfor ufullstendig for dette legemiddelet."
      en: "DMP has **not assessed** {{ item.display }} (ATC {{ row.atc }}) for interactions, so the interaction check is incomplete for this medication."
    source:
      label: "FEST (DMP)"
"""


def write_fest_pack(pack_dir: Path, knowledge_dir: Path, prefix: str, *, version: str = "1.0.0",
                    effective_from: str = "2026-01-01") -> Path:
    """Write a draft rule pack ``medication.fest`` for tables imported by :func:`import_fest` into
    ``knowledge_dir/prefix``; it pins their release and SHA-256. Returns the pack folder."""
    tdir = Path(knowledge_dir) / prefix
    pins = []
    for name in ("interactions", "not-assessed"):
        csv_path, meta_path = tdir / f"{name}.csv", tdir / f"{name}.meta.yaml"
        if not csv_path.is_file() or not meta_path.is_file():
            raise FestError(f"{csv_path}: not found - run import_fest first")
        pins.append((f"{prefix}/{name}", _release(meta_path), _sha(csv_path)))
    release = pins[0][1]
    pack_dir = Path(pack_dir)
    (pack_dir / "tests").mkdir(parents=True, exist_ok=True)
    knowledge = "\n".join(f"  - table: {t}\n    release: {_yaml_str(r)}\n    sha256: \"{s}\"" for t, r, s in pins)
    (pack_dir / "pack.yaml").write_text(f"""# Generated by cds.knowledge.fest.write_fest_pack - a DRAFT pack for imported FEST tables.
id: medication.fest
version: {version}
status: draft
effective:
  from: {effective_from}
title:
  nb: Legemiddelinteraksjoner fra FEST
  en: Drug-drug interactions from FEST
description:
  nb: >-
    Utkast generert fra FESTs interaksjonskatalog (HentetDato {release}). Relevans 1 gir kritisk kort ved
    forordning og advarsel ved journalgjennomgang, 2 gir advarsel/informasjon, 3 gir ikke kort. Substanser
    som DMP ikke har vurdert (InteraksjonIkkeVurdert) gir et informasjonskort «ikke vurdert» - aldri «ingen
    interaksjon». FEST-tekstene er på norsk; de engelske kolonnene gjentar den norske teksten.
  en: >-
    Draft generated from FEST's interaction catalogue (HentetDato {release}). Relevance 1 gives a critical card
    when ordering and a warning on chart review, 2 a warning/info card, 3 no card. Substances DMP has not assessed
    (InteraksjonIkkeVurdert) give a "not assessed" info card - never "no interaction". FEST's texts are Norwegian;
    the English columns repeat the Norwegian text, marked as not translated.
authors: [generated by cds knowledge import-fest; review before activating]
references:
  - id: fest
    citation: FEST interaction catalogue (KatInteraksjon), Direktoratet for medisinske produkter (DMP), HentetDato {release}.
    url: {DMP_SEARCH_URL}
knowledge:
{knowledge}
override_reasons:
  - code: benefit-outweighs-risk
    display: {{nb: Nytten oppveier risikoen, en: Benefit outweighs risk}}
  - code: will-monitor
    display: {{nb: Vil overvåke pasienten, en: Will monitor the patient}}
  - code: already-tolerated
    display: {{nb: Pasienten tåler allerede kombinasjonen, en: Patient already tolerates the combination}}
  - code: not-relevant
    display: {{nb: Ikke relevant for denne pasienten, en: Not relevant for this patient}}
""", encoding="utf-8")
    (pack_dir / "rules.yaml").write_text(FEST_RULES.format(prefix=prefix), encoding="utf-8")
    (pack_dir / "cards.yaml").write_text(FEST_CARDS, encoding="utf-8")
    return pack_dir
