"""``cds packs diff A B``: what changed between two pack versions (rules, cards, knowledge rows)."""

from __future__ import annotations

import json
from typing import Any

from cds.engine.knowledge import Table
from cds.engine.loader import LoadedPack


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False, default=str)


def _keyed(items: dict[str, Any]) -> dict[str, str]:
    return {k: _canon(v) for k, v in items.items()}


def _section(title: str, a: dict[str, str], b: dict[str, str]) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            out.append(f"  + {title} {k}")
        elif k not in b:
            out.append(f"  - {title} {k}")
        elif a[k] != b[k]:
            out.append(f"  ~ {title} {k}")
    return out


def _row_key(t: Table, row: dict[str, Any]) -> str:
    key = t.meta.key or ("id" if "id" in t.meta.columns else None)
    return str(row.get(key)) if key else _canon(row)


def diff_tables(a: Table | None, b: Table | None, table_id: str) -> list[str]:
    if a is None or b is None:
        return [f"  {'+' if a is None else '-'} table {table_id}"]
    if a.sha256 == b.sha256:
        return []
    out = [f"  ~ table {table_id}: release {a.release} → {b.release}"]
    ra = {_row_key(a, r): _canon(r) for r in a.rows}
    rb = {_row_key(b, r): _canon(r) for r in b.rows}
    for line in _section("row", ra, rb):
        out.append("  " + line)
    return out


def diff_packs(a: LoadedPack, b: LoadedPack) -> str:
    lines = [f"{a.key} → {b.key}"]
    if a.content_hash == b.content_hash:
        return lines[0] + "\n  (identical content)"
    ma = a.manifest.model_dump(mode="json", exclude={"version"})
    mb = b.manifest.model_dump(mode="json", exclude={"version"})
    for k in sorted(set(ma) | set(mb)):
        if ma.get(k) != mb.get(k) and k != "knowledge":
            lines.append(f"  ~ manifest {k}")
    lines += _section("rule", _keyed({r.id: r.defn.model_dump(mode="json") for r in a.rules}),
                      _keyed({r.id: r.defn.model_dump(mode="json") for r in b.rules}))
    lines += _section("card", _keyed({k: v.model_dump(mode="json") for k, v in a.cards.items()}),
                      _keyed({k: v.model_dump(mode="json") for k, v in b.cards.items()}))
    for tid in sorted(set(a.tables) | set(b.tables)):
        lines += diff_tables(a.tables.get(tid), b.tables.get(tid), tid)
    return "\n".join(lines)
