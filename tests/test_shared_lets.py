"""Shared lets: an expression used by several rules of a pack (a YAML anchor such as
``let: *padua``) is computed once per evaluation for the same inputs. Lets are pure, so the
cards must be exactly the same with and without the memo; these tests check that on every case
of the packs that share lets, and that the memo is keyed by the inputs (two candidates with
different inputs get their own values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cds.engine.registry import RuleSet, load_ruleset
from cds.testing.cases import load_cases, run_case

ROOT = Path(__file__).resolve().parents[1]


def _no_uuids(v: Any) -> Any:
    """Cards without their random uuids (cards and suggestions get new ones per call)."""
    if isinstance(v, dict):
        return {k: _no_uuids(x) for k, x in v.items() if k != "uuid"}
    if isinstance(v, list):
        return [_no_uuids(x) for x in v]
    return v


@pytest.fixture(scope="module")
def rs() -> RuleSet:
    ruleset, problems = load_ruleset(ROOT / "hooks", ROOT / "rules", ROOT / "knowledge")
    assert ruleset is not None, [str(p) for p in problems]
    return ruleset


def test_anchored_lets_are_detected_as_shared(rs: RuleSet) -> None:
    vte = rs.packs["pathways.vte"]["1.0.0"]
    padua = {name for (rule, name) in vte.shared_lets if rule == "padua-high-risk"}
    assert {"score", "max_possible", "on_anticoagulant"} <= padua
    assert padua == {name for (rule, name) in vte.shared_lets if rule == "padua-incomplete"}
    sepsis = rs.packs["pathways.sepsis"]["1.0.0"]
    for (rule, name), key in sepsis.shared_lets.items():  # only expressions that really repeat
        assert sum(1 for k in sepsis.shared_lets.values() if k == key) > 1, (rule, name)


@pytest.mark.parametrize("pack_id", ["pathways.vte", "pediatrics.dosing", "pathways.sepsis", "medication.interactions"])
def test_same_cards_with_and_without_the_memo(rs: RuleSet, pack_id: str) -> None:
    pack = rs.packs[pack_id]["1.0.0"]
    assert pack.shared_lets, f"{pack_id} shares no lets: this test would prove nothing"
    cases = [c for f in pack.test_files for c in load_cases(f)[0]]
    assert len(cases) > 20
    shared = pack.shared_lets
    try:
        with_memo = [run_case(rs, pack, c) for c in cases]
        pack.shared_lets = {}
        without = [run_case(rs, pack, c) for c in cases]
    finally:
        pack.shared_lets = shared
    for a, b in zip(with_memo, without, strict=True):
        assert a.passed, (a.case.name, a.failures)
        assert a.cards and _no_uuids(a.cards) == _no_uuids(b.cards) or not a.cards and not b.cards, a.case.name
        assert a.fired_rules == b.fired_rules, a.case.name
