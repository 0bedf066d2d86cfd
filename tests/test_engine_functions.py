"""Unit tests for the named engine functions (cds.engine.functions) and the code index
(cds.engine.loader.index_codes / lookup_codes), directly and through datalogic."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import datalogic_py as dl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cds.engine.functions import (
    ATC_LEVELS,
    FUNCTIONS,
    OPERATOR_NAMES,
    add_days,
    atc_in,
    band,
    days_between,
    has_condition,
    hours_between,
    latest,
    operators,
    per_kg,
    ratio,
    round_down,
)
from cds.engine.knowledge import Table, load_table
from cds.engine.loader import index_codes, lookup_codes

GARBAGE: list[Any] = [None, True, False, "", "x", [], {}, [None], {"a": 1}, float("nan"), float("inf"), -1, 0]


# --------------------------------------------------------------------------- helpers


def write_table(root: Path, table_id: str, columns: dict[str, dict[str, Any]], header: list[str], rows: list[list[str]]) -> Table:
    import csv

    import yaml

    path = root / f"{table_id}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    meta = {"id": table_id, "title": table_id, "release": "test.1", "columns": columns}
    (root / f"{table_id}.meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    t, problems = load_table(root, table_id)
    assert t is not None and not [p for p in problems if p.severity == "error"], problems
    return t


@pytest.fixture(scope="module")
def score_table(tmp_path_factory: pytest.TempPathFactory) -> Table:
    """A banded score table (a paediatric early-warning style table, made up for the test)."""
    root = tmp_path_factory.mktemp("knowledge")
    cols = {
        "parameter": {"type": "code", "required": True},
        "low": {"type": "decimal"},
        "high": {"type": "decimal"},
        "points": {"type": "int", "required": True},
        "source": {"type": "text", "required": True},
    }
    rows = [
        ["resp_rate", "", "8", "3", "test"],  # open below
        ["resp_rate", "9", "11", "1", "test"],
        ["resp_rate", "12", "20", "0", "test"],
        ["resp_rate", "21", "24", "2", "test"],
        ["resp_rate", "25", "", "3", "test"],  # open above
        ["spo2", "96", "", "0", "test"],
        ["spo2", "", "91", "3", "test"],
        ["temp", "", "", "7", "test"],  # fully open
    ]
    return write_table(root, "test/score", cols, ["parameter", "low", "high", "points", "source"], rows)


# --------------------------------------------------------------------------- atc_in


class TestAtcIn:
    def test_class_contains_substance(self) -> None:
        assert atc_in(["N06AA09"], ["N06AA"]) is True

    def test_sibling_class_does_not_match(self) -> None:
        assert atc_in(["N06AA09"], ["N06AB"]) is False

    @pytest.mark.parametrize("cls", ["N", "N06", "N06A", "N06AA", "N06AA09"])
    def test_every_level_matches(self, cls: str) -> None:
        assert atc_in(["N06AA09"], [cls]) is True

    def test_substance_does_not_contain_its_class(self) -> None:
        # A med coded only at class level is not "in" a more specific substance.
        assert atc_in(["N06AA"], ["N06AA09"]) is False

    def test_scalars_are_accepted(self) -> None:
        assert atc_in("N06AA09", "N06AA") is True
        assert atc_in("N06AA09", "N05") is False

    def test_any_of_many(self) -> None:
        assert atc_in(["M01AE01", "B01AA03"], ["N02", "B01AA"]) is True
        assert atc_in(["M01AE01", "B01AA03"], ["N02", "B01AB"]) is False

    def test_empty_class_never_matches_everything(self) -> None:
        assert atc_in(["N06AA09"], [""]) is False
        assert atc_in(["N06AA09"], []) is False
        assert atc_in([], ["N"]) is False

    @pytest.mark.parametrize("g", GARBAGE)
    def test_garbage(self, g: Any) -> None:
        assert atc_in(g, ["N06AA"]) is False
        assert atc_in(["N06AA09"], g) is False
        assert atc_in([g, "N06AA09"], ["N06AA"]) is True


# --------------------------------------------------------------------------- has_condition


CONDS = [
    {"icd10": ["A41.9"], "icpc2": ["A78"], "snomed": ["91302008"]},
    {"icd10": ["E109"], "icpc2": [], "snomed": []},
]


class TestHasCondition:
    @pytest.mark.parametrize("prefix", ["A41", "A41.9", "A419", "A4", "A"])
    def test_icd10_prefix_with_dots(self, prefix: str) -> None:
        assert has_condition(CONDS, "icd10", [prefix]) is True

    @pytest.mark.parametrize("prefix", ["E10", "E10.9", "E109"])
    def test_icd10_code_stored_without_dot(self, prefix: str) -> None:
        assert has_condition(CONDS, "icd10", prefix) is True

    @pytest.mark.parametrize("prefix", ["A40", "A41.0", "A4190", "E11", "J"])
    def test_icd10_non_matches(self, prefix: str) -> None:
        assert has_condition(CONDS, "icd10", [prefix]) is False

    def test_snomed_exact_only(self) -> None:
        assert has_condition(CONDS, "snomed", ["91302008"]) is True
        assert has_condition(CONDS, "snomed", ["9130200"]) is False  # a prefix is not a SNOMED match
        assert has_condition(CONDS, "snomed", ["913020081"]) is False

    def test_icpc2(self) -> None:
        assert has_condition(CONDS, "icpc2", ["A78"]) is True
        assert has_condition(CONDS, "icpc2", ["A77"]) is False

    def test_system_is_respected(self) -> None:
        # The SNOMED code is not an ICD-10 code.
        assert has_condition(CONDS, "icd10", ["91302008"]) is False
        assert has_condition(CONDS, "icpc2", ["A41"]) is False

    def test_unknown_system(self) -> None:
        assert has_condition(CONDS, "loinc", ["A41"]) is False

    @pytest.mark.parametrize("g", GARBAGE)
    def test_garbage(self, g: Any) -> None:
        assert has_condition(g, "icd10", ["A41"]) is False
        assert has_condition(CONDS, g, ["A41"]) is False
        assert has_condition(CONDS, "icd10", g) is False
        assert has_condition([g, *CONDS], "icd10", ["A41"]) is True
        assert has_condition([{"icd10": [g, "A41.9"]}], "icd10", "A41") is True

    def test_empty_prefix_is_ignored(self) -> None:
        assert has_condition(CONDS, "icd10", [""]) is False


# --------------------------------------------------------------------------- days_between / hours_between


class TestBetween:
    def test_days_dates(self) -> None:
        assert days_between("2024-02-28", "2024-03-01") == 2.0  # leap year
        assert days_between("2023-02-28", "2023-03-01") == 1.0
        assert days_between("2024-03-01", "2024-02-28") == -2.0
        assert days_between("2024-01-01", "2024-01-01") == 0.0

    def test_days_are_calendar_days(self) -> None:
        assert days_between("2024-01-01T23:59:00", "2024-01-02T00:01:00") == 1.0
        assert days_between("2024-01-01T00:00:00", "2024-01-01T23:59:59") == 0.0
        assert days_between("2024-01-01", "2024-01-03T12:00:00Z") == 2.0

    def test_hours(self) -> None:
        assert hours_between("2024-01-01T00:00:00Z", "2024-01-01T06:30:00Z") == 6.5
        assert hours_between("2024-01-02", "2024-01-01") == -24.0
        assert hours_between("2024-01-01T00:00:00Z", "2024-01-01T00:00:01Z") == round(1 / 3600, 3)

    def test_hours_same_offset(self) -> None:
        assert hours_between("2024-06-01T08:00:00+02:00", "2024-06-01T10:00:00+02:00") == 2.0

    def test_hours_mixed_offsets(self) -> None:
        # 10:00+02:00 is 08:00Z; the context's "now" is UTC while FHIR times keep their offset.
        assert hours_between("2024-06-01T10:00:00+02:00", "2024-06-01T10:00:00+00:00") == 2.0

    @pytest.mark.parametrize("g", [*GARBAGE, "2024-13-01", "yesterday", "2024", "2024-06", "2024-06-01T25:00"])
    def test_garbage(self, g: Any) -> None:
        assert days_between(g, "2024-01-01") is None
        assert days_between("2024-01-01", g) is None
        assert hours_between(g, "2024-01-01") is None
        assert hours_between("2024-01-01", g) is None


class TestAddDays:
    def test_calendar_dates(self) -> None:
        assert add_days("2024-02-27", 2) == "2024-02-29"  # leap year
        assert add_days("2023-02-27", 2) == "2023-03-01"
        assert add_days("2026-12-30", 3) == "2027-01-02"
        assert add_days("2024-03-01", -1) == "2024-02-29"
        assert add_days("2024-03-01", 0) == "2024-03-01"
        assert add_days("2024-03-01", 7.0) == "2024-03-08"  # JSON numbers arrive as floats

    def test_a_time_counts_from_its_utc_date(self) -> None:
        assert add_days("2024-01-01T23:30:00Z", 1) == "2024-01-02"
        assert add_days("2024-01-02T00:30:00+02:00", 1) == "2024-01-02"  # 2024-01-01T22:30Z

    @pytest.mark.parametrize("n", [None, True, "3", 1.5, float("nan"), float("inf"), [], {}])
    def test_days_must_be_a_whole_number(self, n: Any) -> None:
        assert add_days("2024-01-01", n) is None

    @pytest.mark.parametrize("g", [*GARBAGE, "2024-13-01", "2024-06", "yesterday"])
    def test_garbage_date(self, g: Any) -> None:
        assert add_days(g, 1) is None

    def test_out_of_range(self) -> None:
        assert add_days("9999-12-31", 1) is None

    @given(st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 12, 31)), st.integers(min_value=-40000, max_value=40000))
    def test_inverse_of_days_between(self, d: date, n: int) -> None:
        out = add_days(d.isoformat(), n)
        assert out is not None
        assert days_between(d.isoformat(), out) == float(n)


# --------------------------------------------------------------------------- latest


OBS = [
    {"value": 38.5, "unit": "Cel", "age_hours": 2.0},
    {"value": 37.0, "unit": "Cel", "age_hours": 30.0},
]


class TestLatest:
    def test_newest_within_window(self) -> None:
        assert latest(OBS, 24) is OBS[0]

    def test_window_boundary_is_inclusive(self) -> None:
        assert latest(OBS, 2) is OBS[0]
        assert latest(OBS, 1.999) is None

    def test_outside_window_does_not_fall_back_to_older(self) -> None:
        obs = [{"value": 1, "age_hours": 48.0}, {"value": 2, "age_hours": 1.0}]
        assert latest(obs, 24) is None

    def test_no_window(self) -> None:
        assert latest(OBS) is OBS[0]
        assert latest(OBS, None) is OBS[0]

    def test_unknown_age_with_window_is_null(self) -> None:
        assert latest([{"value": 1, "age_hours": None}], 24) is None
        assert latest([{"value": 1}], 24) is None
        assert latest([{"value": 1}]) == {"value": 1}

    def test_empty(self) -> None:
        assert latest([], 24) is None
        assert latest(None, 24) is None

    def test_skips_non_objects(self) -> None:
        assert latest([None, "x", 3, OBS[0]], 24) is OBS[0]

    @pytest.mark.parametrize("g", GARBAGE)
    def test_garbage(self, g: Any) -> None:
        out = latest(g, 24)
        assert out is None or isinstance(out, dict)


# --------------------------------------------------------------------------- per_kg / ratio


class TestPerKgRatio:
    def test_per_kg(self) -> None:
        assert per_kg(200, 20) == 10.0
        assert per_kg(200.0, 8) == 25.0
        assert per_kg(0, 20) == 0.0

    @pytest.mark.parametrize("kg", [0, 0.0, -1, -20.5, None, "20", True, float("nan"), float("inf"), [20], {}])
    def test_per_kg_bad_weight(self, kg: Any) -> None:
        assert per_kg(200, kg) is None

    @pytest.mark.parametrize("amount", [None, "200", True, float("nan"), float("-inf"), [200], {}])
    def test_per_kg_bad_amount(self, amount: Any) -> None:
        assert per_kg(amount, 20) is None

    def test_ratio(self) -> None:
        assert ratio(1, 4) == 0.25
        assert ratio(-3, 2) == -1.5
        assert ratio(0, 5) == 0.0

    @pytest.mark.parametrize("b", [0, 0.0, -0.0, None, "2", False, float("nan")])
    def test_ratio_bad_denominator(self, b: Any) -> None:
        assert ratio(1, b) is None

    @pytest.mark.parametrize("a", [None, "1", True, float("inf")])
    def test_ratio_bad_numerator(self, a: Any) -> None:
        assert ratio(a, 2) is None

    def test_overflowing_quotient_is_null(self) -> None:
        assert per_kg(1e308, 1e-10) is None
        assert ratio(1e308, 1e-308) is None


# --------------------------------------------------------------------------- round_down


pos = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)


class TestRoundDown:
    @pytest.mark.parametrize(
        "v,s,out",
        [(437.5, 10, 430), (430, 10, 430), (439.999, 10, 430), (9.9, 10, 0), (2.5, 0.5, 2.5), (2.74, 0.25, 2.5), (0, 10, 0)],
    )
    def test_examples(self, v: float, s: float, out: float) -> None:
        assert round_down(v, s) == pytest.approx(out)

    def test_exact_multiple_with_float_noise_stays(self) -> None:
        # 0.7 / 0.1 == 6.999999999999999: a true multiple must not drop a whole step.
        assert round_down(0.7, 0.1) == pytest.approx(0.7)

    @pytest.mark.parametrize("s", [0, -10, None, "10", True, float("nan"), float("inf")])
    def test_bad_step(self, s: Any) -> None:
        assert round_down(100, s) is None

    @pytest.mark.parametrize("v", [None, "100", True, float("nan"), [100]])
    def test_bad_value(self, v: Any) -> None:
        assert round_down(v, 10) is None

    @settings(max_examples=300, deadline=None)
    @given(pos, pos)
    def test_property_within_one_step_up_to_float_tolerance(self, v: float, s: float) -> None:
        r = round_down(v, s)
        assert r is not None
        tol = 1e-6 * max(v, s)
        assert r <= v + tol
        assert v - r < s + tol

    @settings(max_examples=300, deadline=None)
    @given(pos, pos)
    @example(10 - 1e-9, 1.0)
    @example(399.9999999, 10.0)
    def test_property_never_rounds_up(self, v: float, s: float) -> None:
        r = round_down(v, s)
        assert r is not None
        assert r <= v
        assert v - r < s

    def test_huge_values_are_exact_not_an_error(self) -> None:
        # exact decimal arithmetic: 1e308 is a multiple of 1e-10, so it is its own round-down
        assert round_down(1e308, 1e-10) == 1e308
        assert round_down(1e308, 3.0) is not None and round_down(1e308, 3.0) <= 1e308


# --------------------------------------------------------------------------- band


class TestBand:
    @pytest.mark.parametrize(
        "value,points",
        [(0, 3), (8, 3), (8.5, None), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (80, 3)],
    )
    def test_resp_rate(self, score_table: Table, value: float, points: int | None) -> None:
        assert band(score_table, "resp_rate", value) == points

    def test_open_ends(self, score_table: Table) -> None:
        assert band(score_table, "spo2", 100) == 0
        assert band(score_table, "spo2", 96) == 0
        assert band(score_table, "spo2", 93) is None  # gap between bands
        assert band(score_table, "spo2", -5) == 3
        assert band(score_table, "temp", -1e9) == 7
        assert band(score_table, "temp", 1e9) == 7

    def test_unknown_parameter(self, score_table: Table) -> None:
        assert band(score_table, "heart_rate", 100) is None

    @pytest.mark.parametrize("g", [None, "12", True, float("nan"), [12], {}])
    def test_garbage_value(self, score_table: Table, g: Any) -> None:
        assert band(score_table, "resp_rate", g) is None

    def test_no_table(self) -> None:
        assert band(None, "resp_rate", 12) is None


# --------------------------------------------------------------------------- through datalogic


@pytest.fixture(scope="module")
def engine(score_table: Table) -> dl.Engine:
    return dl.Engine(custom_operators=operators({"test/score": score_table}))


def ev(engine: dl.Engine, logic: Any, data: dict[str, Any] | None = None) -> Any:
    return engine.compile(logic).evaluate(data or {})


class TestDatalogic:
    def test_every_function_is_an_operator(self) -> None:
        ops = operators({})
        assert set(ops) == set(OPERATOR_NAMES) == {*FUNCTIONS, "band", "classify"}
        for name, op in ops.items():
            assert callable(op), name

    def test_ops_are_json_in_json_out(self) -> None:
        ops = operators({})
        assert json.loads(ops["per_kg"]("[200, 20]")) == 10.0
        assert ops["per_kg"]("[200, 0]") == "null"
        assert ops["per_kg"]("not json") == "null"
        assert ops["per_kg"]("[1, 2, 3, 4]") == "null"  # wrong arity
        assert json.loads(ops["latest"]('{"value": 1}')) == {"value": 1}  # a non-array argument is wrapped
        assert ops["atc_in"]('"N06AA09"') == "null"  # ... and a missing argument is null, not an error

    def test_per_kg(self, engine: dl.Engine) -> None:
        rule = {"per_kg": [{"var": "a"}, {"var": "b"}]}
        assert ev(engine, rule, {"a": 10, "b": 4}) == 2.5
        assert ev(engine, rule, {"a": 10, "b": 0}) is None
        assert ev(engine, rule, {"a": "x", "b": 2}) is None
        assert ev(engine, rule, {}) is None

    def test_per_kg_in_comparison(self, engine: dl.Engine) -> None:
        rule = {">": [{"per_kg": [{"var": "mg"}, {"var": "kg"}]}, 10]}
        assert ev(engine, rule, {"mg": 400, "kg": 20}) is True
        assert ev(engine, rule, {"mg": 200, "kg": 20}) is False

    def test_atc_in(self, engine: dl.Engine) -> None:
        rule = {"atc_in": [{"var": "item.atc"}, ["N06AA"]]}
        assert ev(engine, rule, {"item": {"atc": ["N06AA09"]}}) is True
        assert ev(engine, rule, {"item": {"atc": ["N06AB06"]}}) is False
        assert ev(engine, rule, {"item": {}}) is False

    def test_has_condition(self, engine: dl.Engine) -> None:
        rule = {"has_condition": [{"var": "conditions"}, "icd10", ["A41"]]}
        assert ev(engine, rule, {"conditions": CONDS}) is True
        assert ev(engine, rule, {"conditions": []}) is False

    def test_days_hours(self, engine: dl.Engine) -> None:
        assert ev(engine, {"days_between": ["2024-01-01", {"var": "now"}]}, {"now": "2024-01-31T10:00:00Z"}) == 30
        assert ev(engine, {"hours_between": [{"var": "t"}, {"var": "now"}]}, {"t": "2024-01-01T00:00:00Z", "now": "2024-01-01T12:00:00Z"}) == 12
        assert ev(engine, {"days_between": [{"var": "nope"}, "2024-01-01"]}) is None

    def test_latest(self, engine: dl.Engine) -> None:
        data = {"obs": {"8310-5": OBS}}
        assert ev(engine, {"latest": [{"var": "obs.8310-5"}, 24]}, data) == OBS[0]
        assert ev(engine, {"latest": [{"var": "obs.8310-5"}, 1]}, data) is None
        assert ev(engine, {"latest": [{"var": "obs.missing"}, 24]}, data) is None

    def test_round_down_ratio(self, engine: dl.Engine) -> None:
        assert ev(engine, {"round_down": [{"var": "x"}, 10]}, {"x": 437.5}) == 430
        assert ev(engine, {"round_down": [{"var": "x"}, 0]}, {"x": 437.5}) is None
        assert ev(engine, {"ratio": [1, 4]}) == 0.25
        assert ev(engine, {"ratio": [1, 0]}) is None

    def test_band(self, engine: dl.Engine) -> None:
        assert ev(engine, {"band": ["test/score", "resp_rate", {"var": "rr"}]}, {"rr": 22}) == 2
        assert ev(engine, {"band": ["test/score", "resp_rate", {"var": "rr"}]}, {"rr": None}) is None
        assert ev(engine, {"band": ["no/such-table", "resp_rate", 22]}) is None
        assert ev(engine, {"band": [5, "resp_rate", 22]}) is None

    def test_overflow_is_null_not_an_error(self, engine: dl.Engine) -> None:
        assert ev(engine, {"per_kg": [1e308, 1e-10]}) is None

    def test_round_down_huge_values_are_not_an_error(self, engine: dl.Engine) -> None:
        assert ev(engine, {"round_down": [1e308, 1e-10]}) == 1e308


# --------------------------------------------------------------------------- index_codes / lookup_codes


class CountingMap(Mapping[str, list[int]]):
    """A read-only mapping that records every key probed and every full iteration."""

    def __init__(self, d: dict[str, list[int]]) -> None:
        self._d = d
        self.probes: list[str] = []
        self.iterations = 0

    def __getitem__(self, key: str) -> list[int]:
        self.probes.append(key)
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        self.iterations += 1
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


HIER_ROWS = [
    {"atc": "N"},  # 0
    {"atc": "N06"},  # 1
    {"atc": "N06A"},  # 2
    {"atc": "N06AA"},  # 3
    {"atc": "N06AA09"},  # 4
    {"atc": "N06AB"},  # 5
    {"atc": "N05"},  # 6
    {"atc": "M"},  # 7
    {"atc": "N06AA10"},  # 8
    {"atc": "N06AA09"},  # 9 (a second row for the same code)
]


class TestLookupCodes:
    def test_index(self) -> None:
        idx = index_codes(HIER_ROWS, "atc")
        assert idx["N06AA09"] == [4, 9]
        assert idx["N"] == [0]

    def test_substance_matches_rows_at_every_level(self) -> None:
        idx = index_codes(HIER_ROWS, "atc")
        assert lookup_codes(idx, ["N06AA09"], "atc") == [0, 1, 2, 3, 4, 9]

    @pytest.mark.parametrize(
        "code,rows",
        [("N", [0]), ("N06", [0, 1]), ("N06A", [0, 1, 2]), ("N06AA", [0, 1, 2, 3]), ("N06AA10", [0, 1, 2, 3, 8]), ("N06AB06", [0, 1, 2, 5])],
    )
    def test_each_level(self, code: str, rows: list[int]) -> None:
        assert lookup_codes(index_codes(HIER_ROWS, "atc"), [code], "atc") == rows

    def test_several_codes_union_sorted_unique(self) -> None:
        idx = index_codes(HIER_ROWS, "atc")
        assert lookup_codes(idx, ["N06AA09", "M01AE01", "N05BA01"], "atc") == [0, 1, 2, 3, 4, 6, 7, 9]

    def test_no_codes(self) -> None:
        assert lookup_codes(index_codes(HIER_ROWS, "atc"), [], "atc") == []
        assert lookup_codes({}, ["N06AA09"], "atc") == []

    def test_list_valued_column(self) -> None:
        rows = [
            {"b_atc": ["L04AX01", "L01BB02"]},
            {"b_atc": ["N06A"]},
            {"b_atc": []},
            {"b_atc": None},
            {"b_atc": ["", None, 5]},
            {},
        ]
        idx = index_codes(rows, "b_atc")
        assert idx == {"L04AX01": [0], "L01BB02": [0], "N06A": [1]}
        assert lookup_codes(idx, ["L01BB02"], "atc") == [0]
        assert lookup_codes(idx, ["N06AB06", "L04AX01"], "atc") == [0, 1]

    def test_rxnorm_is_exact(self) -> None:
        rows = [{"rx": "5640"}, {"rx": "56"}, {"rx": "564011"}, {"rx": ["161", "5640"]}]
        idx = index_codes(rows, "rx")
        assert lookup_codes(idx, ["5640"], "rxnorm") == [0, 3]
        assert lookup_codes(idx, ["56"], "rxnorm") == [1]
        assert lookup_codes(idx, ["564"], "rxnorm") == []
        assert lookup_codes(idx, ["5640", "161"], "rxnorm") == [0, 3]

    def test_code_key_is_exact(self) -> None:
        idx = index_codes([{"c": "A41"}, {"c": "A419"}], "c")
        assert lookup_codes(idx, ["A419"], "code") == [1]


ATC_FIRST = "ABCDGHJLMNPRSV"
LETTERS = "ABCDEFGHJKLMNPQRSTUVX"


def _atc7(rnd: random.Random) -> str:
    return f"{rnd.choice(ATC_FIRST)}{rnd.randint(1, 9):02d}{rnd.choice(LETTERS)}{rnd.choice(LETTERS)}{rnd.randint(1, 30):02d}"


def _big_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        code = _atc7(rnd)[: rnd.choice(ATC_LEVELS)]
        if rnd.random() < 0.1:  # some list-valued rows
            rows.append({"atc": [code, _atc7(rnd)]})
        else:
            rows.append({"atc": code})
    return rows


BIG_ROWS = _big_rows(10_000, 1234)
SMALL_ROWS = BIG_ROWS[:10]
BIG_IDX = index_codes(BIG_ROWS, "atc")
SMALL_IDX = index_codes(SMALL_ROWS, "atc")
# Codes that certainly hit something: every row's code, lengthened to a substance where needed.
KNOWN = sorted({c for r in BIG_ROWS for c in (r["atc"] if isinstance(r["atc"], list) else [r["atc"]])})

atc_substance = st.builds(
    lambda a, b, c, d, e: f"{a}{b:02d}{c}{d}{e:02d}",
    st.sampled_from(ATC_FIRST),
    st.integers(1, 9),
    st.sampled_from(LETTERS),
    st.sampled_from(LETTERS),
    st.integers(1, 30),
)
query_code = st.one_of(
    atc_substance,
    st.builds(lambda c, n: c[:n], atc_substance, st.sampled_from(ATC_LEVELS)),
    st.builds(lambda k, s: (k + s)[:7] if len(k) < 7 else k, st.sampled_from(KNOWN), atc_substance),
)


def _expected(rows: list[dict[str, Any]], codes: list[str]) -> list[int]:
    out = set()
    for i, r in enumerate(rows):
        row_codes = r["atc"] if isinstance(r["atc"], list) else [r["atc"]]
        for rc in row_codes:
            for c in codes:
                if len(rc) in ATC_LEVELS and len(rc) <= len(c) and c[: len(rc)] == rc:
                    out.add(i)
    return sorted(out)


class TestLookupCost:
    @settings(max_examples=40, deadline=None)
    @given(st.lists(query_code, min_size=0, max_size=6))
    def test_rows_correct_and_probes_bounded(self, codes: list[str]) -> None:
        big = CountingMap(BIG_IDX)
        got = lookup_codes(big, codes, "atc")  # type: ignore[arg-type]
        assert got == _expected(BIG_ROWS, codes)
        assert len(big.probes) <= len(codes) * len(ATC_LEVELS)
        assert big.iterations == 0  # never scans the index
        # every key probed is a prefix of a queried code at an ATC level
        assert all(any(c.startswith(p) and len(p) in ATC_LEVELS for c in codes) for p in big.probes)

        small = CountingMap(SMALL_IDX)
        assert lookup_codes(small, codes, "atc") == _expected(SMALL_ROWS, codes)  # type: ignore[arg-type]
        assert small.probes == big.probes  # the same probes whatever the table size

    def test_some_queries_hit(self) -> None:
        # the generated table is not trivially empty for the property above
        codes = [k + "A01"[: 7 - len(k)] if len(k) < 7 else k for k in KNOWN[:50]]
        assert _expected(BIG_ROWS, codes)
        assert lookup_codes(BIG_IDX, codes, "atc") == _expected(BIG_ROWS, codes)

    @pytest.mark.parametrize("n", [1, 3, 4, 5, 7])
    def test_probe_count_per_code_length(self, n: int) -> None:
        m = CountingMap(BIG_IDX)
        lookup_codes(m, ["N06AA09"[:n]], "atc")  # type: ignore[arg-type]
        assert m.probes == ["N06AA09"[:k] for k in ATC_LEVELS if k <= n]

    def test_exact_key_probes_once_per_code(self) -> None:
        m = CountingMap({"5640": [0]})
        assert lookup_codes(m, ["5640", "161", "x"], "rxnorm") == [0]  # type: ignore[arg-type]
        assert m.probes == ["5640", "161", "x"]


def test_nan_is_never_a_number() -> None:
    # _num rejects non-finite numbers, so NaN cannot slip past a comparison in any function
    assert per_kg(math.nan, 1) is None and round_down(math.nan, 1) is None and ratio(math.nan, 1) is None


class TestMedicationListFunctions:
    """any_med_in / meds_in / pair_key: read the rule's own data without list-scope tricks."""

    MEDS = [
        {"key": "MedicationRequest/1", "name": "omeprazole", "atc": ["A02BC01"]},
        {"key": "MedicationRequest/2", "name": "ibuprofen", "atc": ["M01AE01"]},
        {"key": "MedicationRequest/3", "name": "naproxen", "atc": ["M01AE02"]},
        "garbage",
        {"key": "x"},
    ]

    def test_any_med_in_by_class(self) -> None:
        from cds.engine.functions import any_med_in

        assert any_med_in(self.MEDS, ["A02BC"]) is True
        assert any_med_in(self.MEDS, ["B01A"]) is False
        assert any_med_in(None, ["A02BC"]) is False

    def test_except_key_leaves_the_checked_drug_out(self) -> None:
        from cds.engine.functions import any_med_in

        assert any_med_in(self.MEDS, ["M01AE"], "MedicationRequest/2") is True  # naproxen remains
        assert any_med_in(self.MEDS[:2], ["M01AE"], "MedicationRequest/2") is False

    def test_meds_in_names(self) -> None:
        from cds.engine.functions import meds_in

        assert meds_in(self.MEDS, ["M01AE"]) == ["ibuprofen", "naproxen"]
        assert meds_in(self.MEDS, ["M01AE"], "MedicationRequest/3") == ["ibuprofen"]

    def test_pair_key_is_order_free(self) -> None:
        from cds.engine.functions import pair_key

        assert pair_key("b", "a") == pair_key("a", "b") == "a|b"

    def test_through_datalogic(self, engine: dl.Engine) -> None:
        data = {"meds": {"all": self.MEDS}}
        assert engine.eval({"any_med_in": [{"var": "meds.all"}, ["A02BC01"]]}, data) is True
        assert engine.eval({"pair_key": ["z", "y"]}, {}) == "y|z"


class TestClassify:
    """classify: indexed code → class lookup with ICD-10/ATC hierarchy, SNOMED exact."""

    @staticmethod
    def table(tmp_path: Path) -> Table:
        (tmp_path / "t").mkdir(exist_ok=True)
        (tmp_path / "t" / "ev.meta.yaml").write_text(
            "id: t/ev\ntitle: t\nrelease: '1'\ncolumns:\n  system: {type: text, required: true}\n  code: {type: code, required: true}\n"
            "  class: {type: text, required: true}\n  source: {type: text, required: true}\n", encoding="utf-8")
        (tmp_path / "t" / "ev.csv").write_text(
            "system,code,class,source\nicd10,I26,previous_vte,s\nicd10,I80.2,previous_vte,s\nsnomed,128053003,previous_vte,s\n"
            "atc,G03C,hormonal,s\nicd10,C,cancer,s\n", encoding="utf-8")
        t, probs = load_table(tmp_path, "t/ev")
        assert t is not None, probs
        return t

    def test_hierarchy_and_exact(self, tmp_path: Path) -> None:
        from cds.engine.functions import classify

        t = self.table(tmp_path)
        assert classify(t, [{"icd10": ["I26.9"]}]) == ["previous_vte"]
        assert classify(t, [{"icd10": ["I80.29"]}]) == ["previous_vte"]
        assert classify(t, [{"icd10": ["I80.1"]}]) == []  # a sibling is not a subcode
        assert classify(t, [{"snomed": ["128053003"]}, {"snomed": ["1280530031"]}]) == ["previous_vte"]
        assert classify(t, [{"atc": ["G03CA03"]}, {"icd10": ["C50.9"]}]) == ["hormonal", "cancer"]
        assert classify(t, ["junk", None, {"icd10": "I26"}]) == ["previous_vte"]
        assert classify(None, [{"icd10": ["I26"]}]) == []

    def test_through_the_engine_and_validation(self, tmp_path: Path) -> None:
        t = self.table(tmp_path)
        eng = dl.Engine(custom_operators=operators({"t/ev": t}))
        assert eng.eval({"classify": ["t/ev", {"var": "c"}]}, {"c": [{"icd10": ["I26.0"]}]}) == ["previous_vte"]
        assert eng.eval({"classify": ["nope", {"var": "c"}]}, {"c": [{"icd10": ["I26.0"]}]}) == []


class TestLeastGreatest:
    def test_skips_missing_values(self) -> None:
        from cds.engine.functions import greatest, least

        assert least(None, 5, 3.5, "x") == 3.5
        assert greatest(None, 5, 3.5, [7, None]) == 7
        assert least(None, None) is None and greatest() is None

    def test_through_datalogic(self, engine: dl.Engine) -> None:
        assert engine.eval({"least": [{"var": "a"}, {"var": "missing"}, 400]}, {"a": 200}) == 200
        assert engine.eval({"greatest": [{"var": "missing"}]}, {}) is None


class TestFirstCoded:
    PROCS = [
        {"codes": ["npr|A37S"], "time": "2026-11-12T09:00:00+00:00"},
        {"codes": ["npr|A37S", "x|y"], "time": "2026-11-10T09:00:00+00:00"},
        {"codes": ["npr|A37S"], "time": "2026-10-01T09:00:00+00:00"},  # before the pathway start
        {"codes": ["npr|A37CK"], "time": "2026-11-15T09:00:00+00:00"},
        {"codes": ["npr|A37S"]},  # no time
        "junk",
    ]

    def test_earliest_on_or_after(self) -> None:
        from cds.engine.functions import first_coded

        assert first_coded(self.PROCS, ["npr|A37S"], "2026-11-01") == "2026-11-10T09:00:00+00:00"
        assert first_coded(self.PROCS, ["npr|A37S"]) == "2026-10-01T09:00:00+00:00"
        assert first_coded(self.PROCS, ["npr|A37S"], "2026-11-10T23:00:00Z") == "2026-11-10T09:00:00+00:00"  # same calendar day counts
        assert first_coded(self.PROCS, ["npr|A37CK", "npr|A37CM"], "2026-11-01") == "2026-11-15T09:00:00+00:00"
        assert first_coded(self.PROCS, ["npr|A37F"], "2026-11-01") is None
        assert first_coded(self.PROCS, ["npr|A37S"], "not a date") is None
        assert first_coded(None, ["npr|A37S"]) is None
