"""YAML loading that remembers where every value came from.

Authors edit YAML; every problem we report must point at ``file:line:col``. ruamel's
round-trip loader keeps line/column per key and item; we keep that tree next to the plain
data and translate validation-error locations (pydantic ``loc`` tuples, JSON pointers) back
into positions in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError


@dataclass(frozen=True, order=True)
class Problem:
    """One validation problem, located in a file (1-based line and column)."""

    file: str
    line: int
    col: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}"


@dataclass
class Located:
    """Plain data plus the ruamel tree it came from."""

    path: Path
    data: Any
    tree: Any = field(repr=False)

    def where(self, loc: Iterable[Any], *, key: bool = False) -> tuple[int, int]:
        return locate(self.tree, loc, key=key)

    def problem(self, loc: Iterable[Any], message: str, severity: str = "error", *, key: bool = False) -> Problem:
        line, col = self.where(loc, key=key)
        return Problem(str(self.path), line, col, message, severity)


def _plain(node: Any) -> Any:
    if isinstance(node, CommentedMap):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v) for v in node]
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    # ruamel scalar subclasses (ScalarFloat, etc.) → builtins
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node  # dates stay as date/datetime objects


M = TypeVar("M", bound=BaseModel)


class YamlError(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def load_yaml(path: Path) -> Located:
    yaml = YAML(typ="rt")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise YamlError(Problem(str(path), 1, 1, f"cannot read file: {e.strerror}")) from e
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise YamlError(Problem(str(path), line, col, f"YAML syntax: {e.problem}")) from e
    return Located(path=path, data=_plain(tree), tree=tree)


def locate(tree: Any, loc: Iterable[Any], *, key: bool = False) -> tuple[int, int]:
    """Best (line, col) for a location path; falls back to the deepest parent found. With
    ``key``, a mapping entry is located at its key (e.g. an unknown key), else at its value."""
    line, col = 1, 1
    node = tree
    parts = list(loc)
    for n, part in enumerate(parts):
        if isinstance(node, CommentedMap):
            k = part if part in node else str(part)
            if k not in node:
                break
            try:
                at_key = isinstance(node[k], (CommentedMap, CommentedSeq)) or (key and n == len(parts) - 1)
                ln, cl = node.lc.key(k) if at_key else node.lc.value(k)
            except (KeyError, TypeError, AttributeError):
                ln, cl = node.lc.line, node.lc.col
            line, col = ln + 1, cl + 1
            node = node[k]
        elif isinstance(node, CommentedSeq):
            if not isinstance(part, int) or part >= len(node):
                break
            try:
                ln, cl = node.lc.item(part)
            except (KeyError, TypeError, AttributeError):
                ln, cl = node.lc.line, node.lc.col
            line, col = ln + 1, cl + 1
            node = node[part]
        else:
            break
    return line, col


def pointer_to_loc(pointer: str) -> list[Any]:
    """RFC 6901 JSON pointer → loc parts (ints for numeric segments)."""
    if not pointer or pointer == "/":
        return []
    parts: list[Any] = []
    for raw in pointer.lstrip("/").split("/"):
        seg = raw.replace("~1", "/").replace("~0", "~")
        parts.append(int(seg) if seg.isdigit() else seg)
    return parts


def validate_model(
    model: type[M], doc: Located, data: Any = None, base_loc: tuple[Any, ...] = ()
) -> tuple[M | None, list[Problem]]:
    """Validate ``data`` (default: the whole document) and map errors to file positions."""
    payload = doc.data if data is None else data
    try:
        return model.model_validate(payload), []
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False, include_input=False):
            loc = tuple(base_loc) + tuple(err["loc"])
            where = ".".join(str(p) for p in err["loc"]) or "(document)"
            msg = err["msg"]
            unknown = err["type"] == "extra_forbidden"
            if unknown:
                msg = "unknown key (check the spelling; see docs/authoring.md)"
            elif err["type"] == "missing" and loc and loc[-1] in ("nb", "en"):
                msg = f"missing {loc[-1]} text (required: every text needs both nb and en)"
            problems.append(doc.problem(loc, f"{where}: {msg}", key=unknown))
        return None, problems


def load_model(path: Path, model: type[M]) -> tuple[Located | None, M | None, list[Problem]]:
    """Load a YAML file and validate it against ``model``: (document, model, problems). The
    document is None when the file cannot be read or parsed (the problem says where)."""
    try:
        doc = load_yaml(path)
    except YamlError as e:
        return None, None, [e.problem]
    obj, problems = validate_model(model, doc)
    return doc, obj, problems
