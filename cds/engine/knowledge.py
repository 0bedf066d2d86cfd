"""Knowledge tables: clinical facts as CSV, one source cited per row.

A table is ``knowledge/<area>/<name>.csv`` plus ``<name>.meta.yaml`` declaring its id, release,
and column schema. Tables are validated at load (pandas reads the CSV; every cell is checked
against its column type) into typed rows. Problems point at ``file:line:col`` — CSV line numbers
as a spreadsheet shows them (header = line 1).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from cds.yamlio import Problem, load_model

ATC_RE = re.compile(r"^[A-Z](\d\d([A-Z]([A-Z](\d\d)?)?)?)?$")
ColumnType = Literal["text", "code", "atc", "atc_list", "int", "decimal", "bool", "enum", "date", "list"]


class Column(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: ColumnType = "text"
    required: bool = False
    unique: bool = False
    values: list[str] | None = None  # for enum
    description: str | None = None


class TableMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    title: str
    release: str
    publisher: str | None = None
    description: str | None = None
    columns: dict[str, Column] = Field(min_length=1)
    key: str | None = None


@dataclass
class Table:
    id: str
    meta: TableMeta
    path: Path
    sha256: str
    rows: list[dict[str, Any]]
    lines: list[int] = field(default_factory=list)  # CSV line number per row

    @property
    def release(self) -> str:
        return self.meta.release

    def column_max_len(self, column: str) -> int:
        return max((len(_fmt(r.get(column))) for r in self.rows), default=0)

    def provenance(self) -> dict[str, str]:
        return {"table": self.id, "release": self.release, "sha256": self.sha256}


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def _convert(raw: str, col: Column) -> Any:
    t = col.type
    if t in ("text", "code"):
        return raw
    if t == "atc":
        if not ATC_RE.match(raw):
            raise ValueError(f"{raw!r} is not an ATC code (e.g. N02BE01, or a class such as N06AA)")
        return raw
    if t == "int":
        return int(raw)
    if t == "decimal":
        try:
            d = Decimal(raw.replace(",", "."))
        except InvalidOperation as e:
            raise ValueError(f"{raw!r} is not a number") from e
        f = float(d) if d.is_finite() else float("inf")
        if f in (float("inf"), float("-inf")):
            raise ValueError(f"{raw!r} is not a finite number")
        return f
    if t == "bool":
        low = raw.lower()
        if low in ("true", "yes", "ja", "1"):
            return True
        if low in ("false", "no", "nei", "0"):
            return False
        raise ValueError(f"{raw!r} is not true/false")
    if t == "enum":
        if raw not in (col.values or []):
            raise ValueError(f"{raw!r} is not one of {col.values}")
        return raw
    if t == "date":
        return date.fromisoformat(raw).isoformat()
    if t == "list":
        return [p.strip() for p in raw.split(";") if p.strip()]
    if t == "atc_list":
        codes = [p.strip() for p in raw.split(";") if p.strip()]
        bad = [c for c in codes if not ATC_RE.match(c)]
        if bad:
            what = "is not an ATC code" if len(bad) == 1 else "are not ATC codes"
            raise ValueError(f"{', '.join(map(repr, bad))} {what} (e.g. N02BE01, or a class such as N06AA)")
        if len(set(codes)) != len(codes):
            raise ValueError(f"{raw!r} lists an ATC code twice")
        return codes
    raise ValueError(f"unknown column type {t}")


def load_table(knowledge_dir: Path, table_id: str) -> tuple[Table | None, list[Problem]]:
    csv_path = knowledge_dir / f"{table_id}.csv"
    meta_path = knowledge_dir / f"{table_id}.meta.yaml"
    problems: list[Problem] = []
    if not csv_path.is_file():
        return None, [Problem(str(csv_path), 1, 1, f"knowledge table {table_id!r}: file not found")]
    if not meta_path.is_file():
        return None, [Problem(str(meta_path), 1, 1, f"knowledge table {table_id!r}: meta file not found")]
    doc, meta, errs = load_model(meta_path, TableMeta)
    if doc is None or meta is None:
        return None, errs
    if meta.id != table_id:
        problems.append(doc.problem(["id"], f"id {meta.id!r} must equal the file path {table_id!r}"))
    if "source" not in meta.columns or not meta.columns["source"].required:
        problems.append(doc.problem(["columns"], "every knowledge table needs a required 'source' column"))
    raw_bytes = csv_path.read_bytes()
    sha = hashlib.sha256(raw_bytes).hexdigest()
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, comment=None, encoding="utf-8")
    except Exception as e:  # pandas raises many types for malformed CSV
        return None, problems + [Problem(str(csv_path), 1, 1, f"cannot parse CSV: {e}")]
    header = list(df.columns)
    for name in meta.columns:
        if name not in header:
            problems.append(Problem(str(csv_path), 1, 1, f"column {name!r} declared in meta but missing"))
    for i, name in enumerate(header):
        if name not in meta.columns:
            problems.append(Problem(str(csv_path), 1, i + 1, f"column {name!r} is not declared in {meta_path.name}"))
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    seen: dict[str, dict[str, int]] = {c: {} for c, spec in meta.columns.items() if spec.unique}
    for idx, rec in enumerate(df.to_dict(orient="records")):
        line = idx + 2
        row: dict[str, Any] = {}
        ok = True
        for ci, name in enumerate(header):
            spec = meta.columns.get(name)
            if spec is None:
                continue
            raw = str(rec[name]).strip()
            if raw == "":
                if spec.required:
                    problems.append(Problem(str(csv_path), line, ci + 1, f"{name}: required value missing"))
                    ok = False
                row[name] = None
                continue
            try:
                row[name] = _convert(raw, spec)
            except ValueError as e:
                problems.append(Problem(str(csv_path), line, ci + 1, f"{name}: {e}"))
                ok = False
                continue
            if spec.unique:
                prev = seen[name].get(raw)
                if prev is not None:
                    problems.append(Problem(str(csv_path), line, ci + 1, f"{name}: {raw!r} duplicates line {prev}"))
                    ok = False
                seen[name][raw] = line
        if ok:
            rows.append(row)
            lines.append(line)
    return Table(table_id, meta, csv_path, sha, rows, lines), problems


class KnowledgeCache:
    """Loads each table once per (id, sha256) during one load of the rule set."""

    def __init__(self, knowledge_dir: Path) -> None:
        self.dir = knowledge_dir
        self._tables: dict[str, tuple[Table | None, list[Problem]]] = {}

    def get(self, table_id: str) -> tuple[Table | None, list[Problem]]:
        if table_id not in self._tables:
            self._tables[table_id] = load_table(self.dir, table_id)
        return self._tables[table_id]
