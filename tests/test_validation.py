"""Every kind of author error is caught before a pack goes live, and reported where it is.

Each test takes a fresh copy of the repository's hooks/, rules/ and knowledge/, injects exactly
one error into the demonstration pack (``rules/demo/showcase-1.1``), its knowledge tables or a
service file, loads the whole rule set as the service does (``load_ruleset``), and asserts that
it is rejected with a :class:`~cds.yamlio.Problem` at the right ``file:line:col`` — computed by
searching the modified file for the injected text — and with a message that names what is wrong
in the author's terms. A few run ``cds packs validate`` as a subprocess as well.

Known shortcomings of the loader are kept as strict xfails (``BUG: ...``) so they are visible and
flip to failures when fixed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cds.engine.registry import RuleSet, load_ruleset
from cds.yamlio import Problem
from tests.support.live import repo_copy

PACK = "rules/demo/showcase-1.1"
PACK_YAML = f"{PACK}/pack.yaml"
RULES = f"{PACK}/rules.yaml"
CARDS = f"{PACK}/cards.yaml"
DOSES = "knowledge/demo/ibuprofen-doses.csv"
DOSES_META = "knowledge/demo/ibuprofen-doses.meta.yaml"
SERVICE = "hooks/demo-order.yaml"
SERVICE_V1 = "hooks/demo-order-v1.yaml"
CONSEQUENCE = "no loaded version of pack"  # a service losing its pack: a consequence, not a cause


# ---------------------------------------------------------------- a repository copy to break


@dataclass
class Repo:
    root: Path

    def path(self, rel: str) -> Path:
        return self.root / rel

    def text(self, rel: str) -> str:
        return self.path(rel).read_text(encoding="utf-8")

    def replace(self, rel: str, old: str, new: str) -> None:
        """Replace the one occurrence of ``old`` (fails loudly if the pack changed under us)."""
        text = self.text(rel)
        assert text.count(old) == 1, f"{rel}: expected exactly one {old!r}, found {text.count(old)}"
        self.path(rel).write_text(text.replace(old, new), encoding="utf-8")

    def find(self, rel: str, needle: str, *, after: str | None = None, at: str | None = None) -> tuple[int, int]:
        """1-based (line, col) of ``needle`` (of ``at`` inside it, if given) in the file as it is
        now; with ``after``, the first occurrence after that text."""
        text = self.text(rel)
        start = 0
        if after is not None:
            assert after in text, f"{after!r} not in {rel}"
            start = text.index(after) + len(after)
        i = text.find(needle, start)
        assert i >= 0, f"{needle!r} not in {rel}"
        assert text.count(needle, start) == 1, f"{needle!r} is ambiguous in {rel}"
        if at is not None:
            assert at in needle
            i += needle.index(at)
        line = text.count("\n", 0, i) + 1
        col = i - (text.rfind("\n", 0, i) + 1) + 1
        return line, col

    def load(self) -> tuple[RuleSet | None, list[Problem]]:
        return load_ruleset(self.root / "hooks", self.root / "rules", self.root / "knowledge")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        dirs = ["--hooks-dir", str(self.root / "hooks"), "--rules-dir", str(self.root / "rules"), "--knowledge-dir", str(self.root / "knowledge")]
        return subprocess.run(
            [sys.executable, "-m", "cds.cli", *dirs, *args], capture_output=True, text=True, env=env, cwd=self.root, timeout=120
        )


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(repo_copy(tmp_path / "repo"))


def listing(problems: list[Problem], root: Path) -> str:
    return "\n".join("  " + str(p).replace(str(root) + "/", "") for p in problems)


def rejected(repo: Repo) -> list[Problem]:
    """Load; the rule set must be refused. Returns the error problems."""
    rs, problems = repo.load()
    errors = [p for p in problems if p.severity == "error"]
    assert rs is None, "the broken rule set was accepted:\n" + listing(problems, repo.root)
    assert errors
    return errors


def causes(repo: Repo, errors: list[Problem]) -> list[Problem]:
    """Errors other than 'service X has no loaded version of its pack' (the pack was refused)."""
    return [p for p in errors if CONSEQUENCE not in p.message]


def problem_at(repo: Repo, errors: list[Problem], rel: str, line: int, col: int | None = None) -> Problem:
    want = str(repo.path(rel))
    hits = [p for p in errors if p.file == want and p.line == line and (col is None or p.col == col)]
    where = f"{rel}:{line}" + (f":{col}" if col is not None else "")
    assert hits, f"no problem at {where}; got:\n" + listing(errors, repo.root)
    assert len(hits) == 1, f"several problems at {where}:\n" + listing(hits, repo.root)
    return hits[0]


def says(p: Problem, *fragments: str) -> None:
    for f in fragments:
        assert f in p.message, f"message {p.message!r} lacks {f!r}"


def only(repo: Repo, errors: list[Problem], *expected: Problem) -> None:
    """The injected error is the only cause reported (no noise an author must wade through)."""
    extra = [p for p in causes(repo, errors) if p not in expected]
    assert not extra, "unexpected further problems:\n" + listing(extra, repo.root)


# ---------------------------------------------------------------- control


def test_unmodified_copy_loads_with_zero_problems(repo: Repo) -> None:
    rs, problems = repo.load()
    assert problems == [], listing(problems, repo.root)
    assert rs is not None
    assert {"1.0.0", "1.1.0"} <= set(rs.packs["demo.showcase"])
    assert {"demo-medication-check", "demo-medication-check-v1", "demo-medication-review"} <= set(rs.services.services)


def test_cli_validate_accepts_the_unmodified_copy(repo: Repo) -> None:
    r = repo.cli("packs", "validate")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: ")
    assert "pack version(s)" in r.stdout and "services" in r.stdout
    assert r.stderr == ""


# ---------------------------------------------------------------- unknown and misspelled keys


def test_unknown_key_in_pack_yaml(repo: Repo) -> None:
    repo.replace(PACK_YAML, "min_coverage: 100\n", "min_coverage: 100\nreviewer: dr. Nordmann\n")
    errors = rejected(repo)
    line, _ = repo.find(PACK_YAML, "reviewer:")
    p = problem_at(repo, errors, PACK_YAML, line)
    says(p, "reviewer", "unknown key", "check the spelling")
    only(repo, errors, p)


def test_unknown_key_in_a_rule(repo: Repo) -> None:
    repo.replace(RULES, "    card: unidentified\n", "    card: unidentified\n    priority: high\n")
    errors = rejected(repo)
    line, _ = repo.find(RULES, "priority: high")
    p = problem_at(repo, errors, RULES, line)
    says(p, "rules.1.priority", "unknown key")
    only(repo, errors, p)


@pytest.mark.parametrize(
    "rel,old,new,key",
    [
        (PACK_YAML, "min_coverage: 100\n", "min_coverage: 100\nreviewer: dr. Nordmann\n", "reviewer:"),
        (RULES, "    card: unidentified\n", "    card: unidentified\n    priority: high\n", "priority: high"),
    ],
    ids=["pack.yaml", "rule"],
)
def test_unknown_key_column_is_the_key(repo: Repo, rel: str, old: str, new: str, key: str) -> None:
    repo.replace(rel, old, new)
    errors = rejected(repo)
    problem_at(repo, errors, rel, *repo.find(rel, key))


def test_misspelled_key_in_cards_yaml(repo: Repo) -> None:
    repo.replace(CARDS, "    override_reasons: [benefit-outweighs-risk, will-monitor]\n", "    overide_reasons: [benefit-outweighs-risk, will-monitor]\n")
    errors = rejected(repo)
    p = problem_at(repo, errors, CARDS, *repo.find(CARDS, "overide_reasons:"))
    says(p, "cards.dose-above-range.overide_reasons", "unknown key", "check the spelling")


@pytest.mark.parametrize(
    "old,new",
    [
        ("    override_reasons: [benefit-outweighs-risk, will-monitor]\n", "    overide_reasons: [benefit-outweighs-risk, will-monitor]\n"),
        ('      en: "Weight missing: the dose of {{ item.name }} cannot be checked"\n', ""),
    ],
    ids=["misspelled-key", "missing-en"],
)
def test_invalid_cards_file_does_not_claim_defined_cards_are_missing(repo: Repo, old: str, new: str) -> None:
    repo.replace(CARDS, old, new)
    errors = rejected(repo)
    misleading = [p for p in errors if "is not defined in the pack's cards file" in p.message]
    assert not misleading, listing(misleading, repo.root)


# ---------------------------------------------------------------- JSON Logic


def test_unknown_operator_in_when(repo: Repo) -> None:
    repo.replace(RULES, 'when: {"!": {var: item.identified}}', 'when: {"nicht": {var: item.identified}}')
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, 'when: {"nicht"'))
    says(p, "JSON Logic", "unknown operator `nicht`")
    only(repo, errors, p)


def test_wrong_argument_count_in_when(repo: Repo) -> None:
    repo.replace(
        RULES,
        '{"<": [{var: patient.age_days}, {var: row.max_age_days}]}\n        - {"!": [{var: patient.weight}]}',
        '{"<": [{var: patient.age_days}]}\n        - {"!": [{var: patient.weight}]}',
    )
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, '{"<": [{var: patient.age_days}]}'))
    says(p, "JSON Logic", "`<` takes at least 2 arguments, not 1")
    only(repo, errors, p)


def test_unknown_operator_in_let(repo: Repo) -> None:
    repo.replace(RULES, "suggested_mg: {round_down:", "suggested_mg: {rounddown:")
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, "suggested_mg: {rounddown"))
    says(p, "unknown operator `rounddown`", "did you mean `round_down`?")
    only(repo, errors, p)


def test_wrong_argument_count_in_let(repo: Repo) -> None:
    repo.replace(RULES, "suggested_mg: {round_down: [{var: let.limit_mg}, 10]}", 'suggested_mg: {"!=": [{var: let.limit_mg}]}')
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, "suggested_mg:"))
    says(p, "JSON Logic", "`!=` takes exactly 2 arguments, not 1")
    only(repo, errors, p)


def test_wrong_argument_count_of_an_engine_function_in_let(repo: Repo) -> None:
    repo.replace(RULES, "mg_per_kg: {per_kg: [{var: item.dose.mg}, {var: patient.weight.kg}]}", "mg_per_kg: {per_kg: [{var: item.dose.mg}]}")
    _, problems = repo.load()
    at = repo.find(RULES, "mg_per_kg: {per_kg")
    assert any(p.file == str(repo.path(RULES)) and (p.line, p.col) == at and "per_kg" in p.message for p in problems), listing(problems, repo.root)


def test_unknown_operator_in_severity(repo: Repo) -> None:
    repo.replace(RULES, '- {">": [{var: item.dose.mg}, {var: row.max_single_mg}]}', '- {"greater": [{var: item.dose.mg}, {var: row.max_single_mg}]}')
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, '{"greater"'))
    says(p, "unknown operator `greater`")
    only(repo, errors, p)


def test_wrong_argument_count_in_severity(repo: Repo) -> None:
    repo.replace(RULES, '- {">": [{var: item.dose.mg}, {var: row.max_single_mg}]}', '- {">": [{var: item.dose.mg}]}')
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, '{">": [{var: item.dose.mg}]}'))
    says(p, "`>` takes at least 2 arguments, not 1")
    only(repo, errors, p)


def test_severity_that_is_not_a_severity(repo: Repo) -> None:
    repo.replace(RULES, "severity: info", "severity: informational")
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, "severity: informational", at="informational"))
    says(p, "severity must be one of", "'critical'", "'warning'")
    only(repo, errors, p)


def test_unknown_operator_in_suggestion_when(repo: Repo) -> None:
    repo.replace(CARDS, 'when: {">": [{var: let.suggested_mg}, 0]}', 'when: {"gt": [{var: let.suggested_mg}, 0]}')
    errors = rejected(repo)
    p = problem_at(repo, errors, CARDS, *repo.find(CARDS, 'when: {"gt"'))
    says(p, "unknown operator `gt`")
    only(repo, errors, p)


def test_wrong_argument_count_in_suggestion_when(repo: Repo) -> None:
    repo.replace(CARDS, 'when: {">": [{var: let.suggested_mg}, 0]}', 'when: {">": [{var: let.suggested_mg}]}')
    errors = rejected(repo)
    p = problem_at(repo, errors, CARDS, *repo.find(CARDS, 'when: {">": [{var: let.suggested_mg}]}'))
    says(p, "`>` takes at least 2 arguments, not 1")
    only(repo, errors, p)


# ---------------------------------------------------------------- names a rule cannot read


def test_var_reading_a_column_the_table_does_not_have(repo: Repo) -> None:
    repo.replace(
        RULES,
        "limit_mg: {min: [{\"*\": [{var: row.mg_per_kg_dose_high}, {var: patient.weight.kg}]}, {var: row.max_single_mg}]}",
        "limit_mg: {min: [{\"*\": [{var: row.mg_per_kg_dose_high}, {var: patient.weight.kg}]}, {var: row.nonexistent_column}]}",
    )
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, "{var: row.nonexistent_column}"))  # at the var itself
    says(p, "'row.nonexistent_column'", "row has no field 'nonexistent_column'", "max_single_mg")  # lists what exists
    only(repo, errors, p)


def test_var_reading_item_in_a_rule_without_for_each(repo: Repo) -> None:
    repo.replace(RULES, "    card: interaction\n", '    when: {"==": [{var: item.name}, febuxostat]}\n    card: interaction\n')
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, '{var: item.name}'))  # at the var itself
    says(p, "'item.name'", "unknown name 'item' here", "available: a,")
    assert "item," not in p.message.split("available:")[1]
    only(repo, errors, p)


def test_var_in_a_multi_line_when_is_reported_inside_that_when(repo: Repo) -> None:
    repo.replace(
        RULES,
        '{"<": [{var: patient.age_days}, {var: row.max_age_days}]}\n        - {"!": [{var: patient.weight}]}',
        '{"<": [{var: patient.age_days}, {var: row.nonexistent_column}]}\n        - {"!": [{var: patient.weight}]}',
    )
    errors = rejected(repo)
    when_line, _ = repo.find(RULES, "    when:\n", after="  - id: weight-missing")
    var_line, _ = repo.find(RULES, "row.nonexistent_column")
    [p] = causes(repo, errors)
    assert p.file == str(repo.path(RULES)) and when_line <= p.line <= var_line, listing(errors, repo.root)
    says(p, "row has no field 'nonexistent_column'")


def test_var_in_a_multi_line_when_is_reported_on_its_own_line(repo: Repo) -> None:
    repo.replace(
        RULES,
        '{"<": [{var: patient.age_days}, {var: row.max_age_days}]}\n        - {"!": [{var: patient.weight}]}',
        '{"<": [{var: patient.age_days}, {var: row.nonexistent_column}]}\n        - {"!": [{var: patient.weight}]}',
    )
    errors = rejected(repo)
    problem_at(repo, errors, RULES, repo.find(RULES, "row.nonexistent_column")[0])


@pytest.mark.parametrize(
    "old,new,needle",
    [
        ('when: {">": [{var: let.suggested_mg}, 0]}', 'when: {">": [{var: let.suggested_mgg}, 0]}', "{var: let.suggested_mgg}"),
        ('when: {"==": [{var: b.origin}, draft]}', 'when: {"==": [{var: row.nonexistent_column}, draft]}', "{var: row.nonexistent_column}"),
    ],
    ids=["let", "row"],
)
def test_var_in_a_suggestion_when_is_checked(repo: Repo, old: str, new: str, needle: str) -> None:
    repo.replace(CARDS, old, new)
    errors = rejected(repo)
    problem_at(repo, errors, CARDS, *repo.find(CARDS, needle))


def test_let_reading_an_undefined_let(repo: Repo) -> None:
    repo.replace(RULES, "suggested_mg: {round_down: [{var: let.limit_mg}, 10]}", "suggested_mg: {round_down: [{var: let.limit_mgg}, 10]}")
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, "{var: let.limit_mgg}"))  # at the var itself
    says(p, "'let.limit_mgg'", "let has no field 'limit_mgg'", "limit_mg")
    only(repo, errors, p)


# ---------------------------------------------------------------- knowledge tables


def test_missing_knowledge_file(repo: Repo) -> None:
    repo.path(DOSES).unlink()
    errors = rejected(repo)
    p = problem_at(repo, errors, PACK_YAML, *repo.find(PACK_YAML, "table: demo/ibuprofen-doses", at="demo/"))
    says(p, "knowledge table 'demo/ibuprofen-doses' could not be loaded")
    f = problem_at(repo, errors, DOSES, 1, 1)
    says(f, "'demo/ibuprofen-doses'", "file not found")


def test_missing_knowledge_file_is_not_called_undeclared(repo: Repo) -> None:
    repo.path(DOSES).unlink()
    errors = rejected(repo)
    misleading = [p for p in errors if "is not declared" in p.message or "unknown name 'row'" in p.message]
    assert not misleading, listing(misleading, repo.root)


def _append_row(repo: Repo, **changes: str) -> int:
    """Append a copy of the table's first data row (as a rectal row with a new id), changed as
    given; returns its CSV line number (header = line 1)."""
    path = repo.path(DOSES)
    text = path.read_text(encoding="utf-8")
    header, first = list(csv.reader(io.StringIO(text)))[:2]
    row = dict(zip(header, first))
    row.update({"id": "IBU-PR-3M-12Y", "route": "rectal"})
    row.update(changes)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([row[h] for h in header])
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(text + out.getvalue(), encoding="utf-8")
    return text.count("\n") + 1


def _column(repo: Repo, name: str) -> int:
    header = repo.text(DOSES).splitlines()[0].split(",")
    return header.index(name) + 1


@pytest.mark.parametrize(
    "column,value,fragments",
    [
        ("mg_per_kg_dose_high", "ten", ["mg_per_kg_dose_high: 'ten' is not a number"]),
        ("atc", "M01AE1", ["atc: 'M01AE1' is not an ATC code", "N02BE01"]),
        ("max_daily_mg", "", ["max_daily_mg: required value missing"]),
        ("route", "by mouth", ["route: 'by mouth' is not one of", "'oral'"]),
        ("id", "IBU-PO-3M-12Y", ["id: 'IBU-PO-3M-12Y' duplicates line 2"]),
    ],
    ids=["non-numeric-decimal", "bad-atc", "missing-required", "enum-outside-values", "duplicate-unique-id"],
)
def test_csv_row_failing_its_schema(repo: Repo, column: str, value: str, fragments: list[str]) -> None:
    line = _append_row(repo, **{column: value})
    assert line == 3
    errors = rejected(repo)
    p = problem_at(repo, errors, DOSES, line, _column(repo, column))
    says(p, *fragments)
    # the pack pins the table's checksum, which the new row changed: reported at the pin
    pin = repo.text(PACK_YAML).split("table: demo/ibuprofen-doses")[1].split("sha256: ")[1].split()[0]
    c = problem_at(repo, errors, PACK_YAML, *repo.find(PACK_YAML, pin))
    only(repo, errors, p, c)


def test_checksum_mismatch_after_editing_the_csv(repo: Repo) -> None:
    old = repo.text(DOSES)
    repo.replace(DOSES, ",oral,90,4383,7,10,30,", ",oral,90,4383,7,12,30,")
    new_sha = hashlib.sha256(repo.path(DOSES).read_bytes()).hexdigest()
    assert new_sha != hashlib.sha256(old.encode()).hexdigest()
    errors = rejected(repo)
    pin = repo.text(PACK_YAML).split("table: demo/ibuprofen-doses")[1].split("sha256: ")[1].split()[0]
    p = problem_at(repo, errors, PACK_YAML, *repo.find(PACK_YAML, pin))  # the pinned hash itself
    says(p, "checksum mismatch", new_sha, "new pack version")
    only(repo, errors, p)


def test_release_mismatch(repo: Repo) -> None:
    repo.replace(DOSES_META, 'release: "2026.11.0"', 'release: "2026.12.0"')
    errors = rejected(repo)
    line, _ = repo.find(PACK_YAML, "release:", after="table: demo/ibuprofen-doses")
    p = problem_at(repo, errors, PACK_YAML, *repo.find(PACK_YAML, 'release: "2026.11.0"', after="table: demo/ibuprofen-doses", at='"'))
    assert p.line == line
    says(p, "'2026.11.0'", "'2026.12.0'")
    only(repo, errors, p)


# ---------------------------------------------------------------- cards


def test_card_placeholder_that_cannot_be_filled(repo: Repo) -> None:
    repo.replace(CARDS, "max {{ row.max_single_mg }} mg per dose (KOBLE).\"\n", "max {{ row.max_dose }} mg per dose (KOBLE).\"\n")
    errors = rejected(repo)
    card_line, _ = repo.find(CARDS, "  dose-above-range:")
    use_line, _ = repo.find(CARDS, "{{ row.max_dose }}")
    [p] = causes(repo, errors)
    assert p.file == str(repo.path(CARDS)) and card_line <= p.line <= use_line, listing(errors, repo.root)
    says(p, "'row.max_dose'", "row has no field 'max_dose'", "max_single_mg", "card used by rule 'ibuprofen-dose-above-range'")


def test_card_placeholder_is_reported_on_its_own_line(repo: Repo) -> None:
    repo.replace(CARDS, "max {{ row.max_single_mg }} mg per dose (KOBLE).\"\n", "max {{ row.max_dose }} mg per dose (KOBLE).\"\n")
    errors = rejected(repo)
    problem_at(repo, errors, CARDS, repo.find(CARDS, "{{ row.max_dose }}")[0])


def test_missing_locale_text(repo: Repo) -> None:
    repo.replace(CARDS, '      en: "Weight missing: the dose of {{ item.name }} cannot be checked"\n', "")
    errors = rejected(repo)
    p = problem_at(repo, errors, CARDS, *repo.find(CARDS, "summary:", after="  weight-missing:"))
    says(p, "cards.weight-missing.summary.en", "required")


def test_summary_that_can_exceed_140_characters(repo: Repo) -> None:
    repo.replace(
        CARDS,
        'en: "Weight missing: the dose of {{ item.name }} cannot be checked"',
        'en: "Weight missing: the dose of {{ item.name }} cannot be checked ({{ item.display }}, {{ item.display }})"',
    )
    errors = rejected(repo)
    p = problem_at(repo, errors, CARDS, *repo.find(CARDS, 'en: "Weight missing:', at='"'))
    says(p, "summary (en) can reach", "the limit is 139", "< 140")
    only(repo, errors, p)


@pytest.mark.parametrize("length,ok", [(139, True), (140, False)])
def test_summary_length_boundary(repo: Repo, length: int, ok: bool) -> None:
    text = ("Weight missing " + "x" * 200)[:length]
    repo.replace(CARDS, 'en: "Weight missing: the dose of {{ item.name }} cannot be checked"', f'en: "{text}"')
    rs, problems = repo.load()
    if ok:
        assert rs is not None and problems == [], listing(problems, repo.root)
    else:
        errors = rejected(repo)
        p = problem_at(repo, errors, CARDS, *repo.find(CARDS, f'en: "{text}"', at='"'))
        says(p, "can reach 140 characters")


def test_card_referenced_by_a_rule_but_not_defined(repo: Repo) -> None:
    repo.replace(RULES, "card: weight-missing", "card: weight-absent")
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, "card: weight-absent", at="weight-absent"))
    says(p, "card 'weight-absent' is not defined")
    only(repo, errors, p)


def test_override_reason_not_defined(repo: Repo) -> None:
    repo.replace(CARDS, "override_reasons: [benefit-outweighs-risk, will-monitor]", "override_reasons: [benefit-outweighs-risk, patient-refused]")
    errors = rejected(repo)
    p = problem_at(repo, errors, CARDS, *repo.find(CARDS, "patient-refused"))
    says(p, "override reason 'patient-refused' is not defined in pack.yaml")
    only(repo, errors, p)


# ---------------------------------------------------------------- rules


def test_reference_id_not_defined(repo: Repo) -> None:
    repo.replace(RULES, "references: [onc-2012]", "references: [onc-2021]")
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, "onc-2021"))
    says(p, "reference 'onc-2021' is not listed in pack.yaml references")
    only(repo, errors, p)


def test_duplicate_rule_id(repo: Repo) -> None:
    repo.replace(RULES, "  - id: weight-missing", "  - id: unidentified-medication")
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, "unidentified-medication", after="  - id: ibuprofen-dose-above-range"))
    says(p, "duplicate rule id 'unidentified-medication'")
    only(repo, errors, p)


def test_yaml_syntax_error(repo: Repo) -> None:
    repo.replace(RULES, "    severity: info\n", "    severity: info\n      bad: indent\n")
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, "      bad: indent", at=":"))
    says(p, "YAML syntax", "mapping values are not allowed here")
    only(repo, errors, p)


# ---------------------------------------------------------------- services


def test_service_pinning_a_pack_version_that_does_not_exist(repo: Repo) -> None:
    repo.replace(SERVICE_V1, 'version: "1.0.0"', 'version: "1.0.1"')
    errors = rejected(repo)
    [p] = [e for e in errors if e.file == str(repo.path(SERVICE_V1))]
    says(p, "'demo-medication-check-v1'", "'demo.showcase'", "'1.0.1'")
    assert len(errors) == 1, listing(errors, repo.root)


def test_service_pin_problem_points_at_the_pin(repo: Repo) -> None:
    repo.replace(SERVICE_V1, 'version: "1.0.0"', 'version: "1.0.1"')
    errors = rejected(repo)
    problem_at(repo, errors, SERVICE_V1, repo.find(SERVICE_V1, 'version: "1.0.1"')[0])


def test_service_with_an_invalid_prefetch_token(repo: Repo) -> None:
    repo.replace(SERVICE, "  weight: ", '  draft: "MedicationRequest/{{context.draftOrders.id}}"\n  weight: ')
    errors = rejected(repo)
    [p] = errors
    assert p.file == str(repo.path(SERVICE))
    says(p, "prefetch 'draft'", "{{context.draftOrders.id}}", "not a CDS Hooks 2.0 prefetch token")


def test_invalid_prefetch_token_points_at_the_prefetch_key(repo: Repo) -> None:
    repo.replace(SERVICE, "  weight: ", '  draft: "MedicationRequest/{{context.draftOrders.id}}"\n  weight: ')
    errors = rejected(repo)
    problem_at(repo, errors, SERVICE, repo.find(SERVICE, "  draft:")[0])


# ---------------------------------------------------------------- the CLI reports the same


def _cli_rejects(repo: Repo, rel: str, line: int, col: int, fragment: str) -> None:
    r = repo.cli("packs", "validate")
    assert r.returncode == 1, r.stdout + r.stderr
    prefix = f"{repo.path(rel)}:{line}:{col}: error: "
    lines = r.stderr.splitlines()
    assert any(ln.startswith(prefix) and fragment in ln for ln in lines), f"no line {prefix}...{fragment}...; stderr:\n{r.stderr}"
    assert lines[-1].endswith("error(s); the rule set would NOT be loaded")
    assert "ok:" not in r.stdout


def test_cli_reports_a_yaml_syntax_error(repo: Repo) -> None:
    repo.replace(RULES, "    severity: info\n", "    severity: info\n      bad: indent\n")
    _cli_rejects(repo, RULES, *repo.find(RULES, "      bad: indent", at=":"), "YAML syntax: mapping values are not allowed here")


def test_cli_reports_a_csv_row(repo: Repo) -> None:
    line = _append_row(repo, atc="M01AE1")
    _cli_rejects(repo, DOSES, line, _column(repo, "atc"), "atc: 'M01AE1' is not an ATC code")


def test_cli_reports_bad_json_logic(repo: Repo) -> None:
    repo.replace(RULES, 'when: {"!": {var: item.identified}}', 'when: {"nicht": {var: item.identified}}')
    _cli_rejects(repo, RULES, *repo.find(RULES, 'when: {"nicht"'), "JSON Logic: unknown operator `nicht`")


def test_cli_reports_an_undefined_card(repo: Repo) -> None:
    repo.replace(RULES, "card: weight-missing", "card: weight-absent")
    _cli_rejects(repo, RULES, *repo.find(RULES, "card: weight-absent", at="weight-absent"), "card 'weight-absent' is not defined")


# ---------------------------------------------------------------- packs list / diff


def test_cli_packs_list(repo: Repo) -> None:
    r = repo.cli("packs", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["pack", "version", "status", "effective", "rules", "hash"]
    rows = {tuple(ln.split()[:2]): ln.split() for ln in lines[1:]}
    v10 = rows[("demo.showcase", "1.0.0")]
    v11 = rows[("demo.showcase", "1.1.0")]
    assert v10[2:5] == ["active", "2025-01-01..", "2"]
    assert v11[2:5] == ["active", "2026-01-01..", "4"]
    assert v10[5].startswith("sha256:") and v11[5].startswith("sha256:") and v10[5] != v11[5]


def test_cli_packs_diff(repo: Repo) -> None:
    r = repo.cli("packs", "diff", "demo.showcase@1.0.0", "demo.showcase@1.1.0")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "demo.showcase@1.0.0 → demo.showcase@1.1.0"
    for expected in [
        "  + rule ibuprofen-dose-above-range",  # rules added
        "  + rule weight-missing",
        "  ~ card interaction",  # card text changed
        "  + card dose-above-range",
        "  + card weight-missing",
        "  + table demo/ibuprofen-doses",  # knowledge table added
    ]:
        assert expected in lines, f"{expected!r} not in:\n{r.stdout}"
    assert not any(ln.startswith("  - ") for ln in lines), r.stdout  # nothing removed
    assert "  ~ rule interaction" not in lines and "  ~ rule unidentified-medication" not in lines


def test_cli_packs_diff_unknown_version(repo: Repo) -> None:
    r = repo.cli("packs", "diff", "demo.showcase@1.0.0", "demo.showcase@9.9.9")
    assert r.returncode == 2
    assert "no pack 'demo.showcase@9.9.9'" in r.stderr and "demo.showcase@1.1.0" in r.stderr


# ---------------------------------------------------------------- deeper checks (names, filters, tables)


@pytest.mark.parametrize(
    "old,new,needle,fragment",
    [
        ("{per_kg: [{var: item.dose.mg}", "{per_kg: [{var: item.dose.mgg}", "{var: item.dose.mgg}", "item.dose has no field 'mgg'"),
        ("{var: patient.weight.kg}]}, {var: row.max_single_mg}", "{var: patient.wieght.kg}]}, {var: row.max_single_mg}", "{var: patient.wieght.kg}", "patient has no field 'wieght'"),
    ],
    ids=["dose-field", "patient-field"],
)
def test_nested_names_are_checked(repo: Repo, old: str, new: str, needle: str, fragment: str) -> None:
    repo.replace(RULES, old, new)
    errors = rejected(repo)
    p = problem_at(repo, errors, RULES, *repo.find(RULES, needle))
    says(p, fragment)


def test_unknown_filter_in_a_card(repo: Repo) -> None:
    repo.replace(CARDS, "{{ let.mg_per_kg | round2 }} mg/kg (weight", "{{ let.mg_per_kg | round22 }} mg/kg (weight")
    errors = rejected(repo)
    [p] = causes(repo, errors)
    says(p, "unknown filter 'round22'")
    assert p.file == str(repo.path(CARDS)) and p.line == repo.find(CARDS, "round22")[0]


def test_band_reading_an_undeclared_table(repo: Repo) -> None:
    repo.replace(RULES, "suggested_mg: {round_down: [{var: let.limit_mg}, 10]}", 'suggested_mg: {band: ["demo/no-such-table", "x", 1]}')
    errors = rejected(repo)
    [p] = causes(repo, errors)
    says(p, "band: table 'demo/no-such-table' is not declared")
    assert p.line == repo.find(RULES, "demo/no-such-table")[0]


def test_conditions_join_needs_the_code_key(repo: Repo) -> None:
    repo.replace(RULES, "    for_each: meds.focus\n    table: {table: demo/ibuprofen-doses, column: atc}\n    let:",
                 "    for_each: conditions\n    table: {table: demo/ibuprofen-doses, column: atc}\n    let:")
    errors = rejected(repo)
    assert any("set table.key to 'code'" in p.message for p in causes(repo, errors)), listing(errors, repo.root)


def test_app_context_on_an_absolute_link(repo: Repo) -> None:
    repo.replace(CARDS, "        url: https://pmc.ncbi.nlm.nih.gov/articles/PMC3422823/\n",
                 "        url: https://pmc.ncbi.nlm.nih.gov/articles/PMC3422823/\n        app_context: x\n")
    errors = rejected(repo)
    assert any("app_context is only allowed on smart links" in p.message for p in causes(repo, errors)), listing(errors, repo.root)


def test_an_infinite_decimal_is_rejected(repo: Repo) -> None:
    line = _append_row(repo, max_single_mg="1e400")
    errors = rejected(repo)
    assert any(p.file == str(repo.path(DOSES)) and p.line == line and "not a finite number" in p.message for p in errors), listing(errors, repo.root)


def test_a_case_outside_the_pack_s_life_fails_instead_of_passing_vacuously(repo: Repo) -> None:
    from cds.testing.cases import load_cases, run_case

    tests = repo.path(f"{PACK}/tests/outside.yaml")
    tests.write_text(
        "hook: order-sign\nnow: 2025-06-01T12:00:00Z\ncases:\n  - name: before the pack took effect\n"
        "    patient: {age: 40y}\n    orders: [{id: x, atc: M01AE01}]\n    expect: {cards: []}\n",
        encoding="utf-8",
    )
    rs, _ = repo.load()
    pack = rs.packs["demo.showcase"]["1.1.0"]
    [case], _ = load_cases(tests)
    r = run_case(rs, pack, case)
    assert not r.passed and "not in force" in r.failures[0]


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("L01BA01;L04AX3", "'L04AX3' is not an ATC code"),
        ("L01BA01;l04ax03", "'l04ax03' is not an ATC code"),
        ("L01BA01;L01BA01", "lists an ATC code twice"),
    ],
    ids=["malformed-item", "lower-case-item", "duplicate-item"],
)
def test_atc_list_column_checks_every_item(tmp_path: Path, value: str, fragment: str) -> None:
    from cds.engine.knowledge import load_table

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.meta.yaml").write_text(
        "id: t/x\ntitle: x\nrelease: '1'\nkey: id\ncolumns:\n"
        "  id: {type: code, required: true, unique: true}\n"
        "  atc: {type: atc_list, required: true}\n"
        "  source: {type: text, required: true}\n",
        encoding="utf-8",
    )
    (tmp_path / "t" / "x.csv").write_text(f"id,atc,source\nok,N02BE01;M01A,s\nbad,{value},s\n", encoding="utf-8")
    table, problems = load_table(tmp_path, "t/x")
    errors = [p for p in problems if p.severity == "error"]
    assert [(Path(p.file).name, p.line, p.col) for p in errors] == [("x.csv", 3, 2)]
    assert fragment in errors[0].message
