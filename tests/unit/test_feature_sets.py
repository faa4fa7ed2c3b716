"""Feature sets (docs/feature-sets.md): the spec says what a set is and refuses a bad one by
field; the SDK logs a context set's columns under the set's versioned key, so the context a
production model trains on is unchanged; parquet values join by (entity, UTC day, unit id),
a missing file is nulls and a warning, a bad file an error naming it."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.analytics.features import FeatureFileError, FeatureJoiner, MissingFeatureFile
from sluice.core.features import (FeatureSetError, base_context, column_name, context_feature_keys, context_values,
                                  logged_context, parquet_path, resolve)
from sluice.core.spec import FeatureSet, SpecError, load_spec, spec_from_json, spec_from_mapping
from tests.unit.test_sdk_serve_logging import client_with, logged_events

BASE = """
id: exp
status: running
salt: exp-salt
unit: user_id
entity: site
parameters: [{name: model, type: string}]
arms:
  - {name: a, values: {model: m-a}}
  - {name: b, values: {model: m-b}}
default_arm: a
policy: {name: thompson}
reward: {type: binary, name: click}
"""
FEATURE_SETS = """
feature_sets:
  - name: recency
    version: 2
    source: {context: [recency_bucket, visits_7d]}
  - name: stats
    version: "2026-11"
    description: daily per-user statistics from the warehouse
    source: {parquet: "/features/{name}/{version}/{entity}/{date}.parquet", key: user_id, columns: [ctr_28d, segment]}
"""


def with_feature_sets(text: str = FEATURE_SETS):
    return load_spec(BASE + text)


def test_a_spec_declares_context_and_parquet_feature_sets() -> None:
    spec = with_feature_sets()
    recency, stats = spec.feature_sets
    assert (recency.ref, recency.columns, recency.source.parquet) == ("recency@2", ("recency_bucket", "visits_7d"), None)
    assert (stats.ref, stats.columns, stats.source.key_column) == ("stats@2026-11", ("ctr_28d", "segment"), "user_id")
    assert parquet_path(stats, "site-1", date(2026, 11, 3)) == "/features/stats/2026-11/site-1/2026-11-03.parquet"
    assert spec_from_json(spec.model_dump_json()) == spec  # the API's strict reading takes what the spec writes
    assert spec_from_mapping(json.loads(spec.model_dump_json())) == spec


def test_a_spec_without_feature_sets_is_written_as_before_they_existed() -> None:
    # so an SDK or sidecar not yet upgraded still reads every spec that uses none
    assert "feature_sets" not in load_spec(BASE).model_dump_json()
    assert "feature_sets" not in load_spec(BASE).record_fields()["spec_json"]


@pytest.mark.parametrize(("source", "fragments"), [
    ("{}", ["feature_sets[0].source: give either context", "but neither is given"]),
    ('{context: [a], parquet: "/f/{date}.parquet"}', ["feature_sets[0].source: give either context", "not both"]),
    ("{context: []}", ["feature_sets[0].source: context: list at least one column"]),
    ("{context: [a, b, a]}", ["feature_sets[0].source: context: ['a'] appear more than once"]),
    ("{context: [a], key: user_id}", ["feature_sets[0].source: key: only a parquet source has a key"]),
    ("{context: ['sluice.fs:x']}", ["context: column 'sluice.fs:x' starts with the reserved 'sluice.fs:'"]),
    ('{parquet: "/f/{entity}.parquet", columns: [a]}', ["parquet: '/f/{entity}.parquet' has no {date}"]),
    ('{parquet: "/f/{site}/{date}.parquet", columns: [a]}', ["unknown placeholder(s) ['site']"]),
    ('{parquet: "/f/{date}.parquet"}', ["feature_sets[0].source: columns: required with a parquet source"]),
    ('{parquet: "/f/{date}.parquet", columns: [unit_id, a]}', ["columns: 'unit_id' is the key, not a feature"]),
    ("{context: [a], extra: 1}", ["feature_sets[0].source.extra: unknown field"]),
])
def test_a_bad_source_is_refused_naming_the_field(source: str, fragments: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        with_feature_sets(f"feature_sets:\n  - {{name: x, version: 1, source: {source}}}\n")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_declaring_a_feature_set_leaves_the_weight_tables_alone() -> None:
    before, after = load_spec(BASE), with_feature_sets().model_copy(update={"spec_version": 2})
    assert before.same_for_entity(after, "site-1")  # the worker publishes no new table for it
    assert not before.same_for_entity(after.model_copy(update={"traffic_fraction": 0.5}), "site-1")


def test_names_versions_and_duplicates_are_checked() -> None:
    with pytest.raises(SpecError) as info:
        with_feature_sets("""
feature_sets:
  - {name: "no spaces", version: 1, source: {context: [a]}}
  - {name: r, version: "", source: {context: [a]}}
  - {name: r, source: {context: [a]}}
""")
    text = str(info.value)
    assert "feature_sets[0].name: String should match pattern" in text and "'no spaces' is given" in text
    assert "feature_sets[1].version: String should match pattern" in text
    assert "feature_sets[2].version: required field is missing" in text
    with pytest.raises(SpecError, match=r"feature_sets: feature set \(name@version\) names must be unique, but "
                                        r"\['r@1'\] appear more than once"):
        with_feature_sets("""
feature_sets:
  - {name: r, version: 1, source: {context: [a]}}
  - {name: r, version: 1, source: {context: [b]}}
""")
    # two versions of one set may run side by side (two candidates)
    assert len(with_feature_sets("""
feature_sets:
  - {name: r, version: 1, source: {context: [a]}}
  - {name: r, version: 2, source: {context: [a, b]}}
""").feature_sets) == 2


def test_context_columns_are_logged_under_the_set_s_versioned_key_and_nothing_else_changes() -> None:
    spec = with_feature_sets()
    keys = context_feature_keys(spec)
    assert keys == {"recency_bucket": ("sluice.fs:recency@2:recency_bucket",),
                    "visits_7d": ("sluice.fs:recency@2:visits_7d",)}
    logged = dict(logged_context((("device", "mobile"), ("recency_bucket", "3"), ("visits_7d", "12")), keys))
    assert logged == {"device": "mobile", "sluice.fs:recency@2:recency_bucket": "3", "sluice.fs:recency@2:visits_7d": "12"}
    assert base_context(logged) == {"device": "mobile"}  # what a model without the set trains on
    recency = spec.feature_sets[0]
    assert context_values(recency, logged) == ("3", "12")
    assert context_values(recency, {"device": "mobile"}) == (None, None)
    assert column_name(recency, "visits_7d") == "fs.recency.visits_7d"
    assert context_feature_keys(load_spec(BASE)) == {}


def test_a_column_two_sets_name_is_logged_for_each() -> None:
    spec = with_feature_sets("""
feature_sets:
  - {name: r, version: 1, source: {context: [a]}}
  - {name: r, version: 2, source: {context: [a, b]}}
""")
    assert dict(logged_context((("a", "x"),), context_feature_keys(spec))) == {"sluice.fs:r@1:a": "x",
                                                                               "sluice.fs:r@2:a": "x"}


def test_a_feature_set_is_named_with_or_without_its_version() -> None:
    sets = [FeatureSet.model_validate({"name": "r", "version": v, "source": {"context": ["a"]}}) for v in ("3", "2")]
    assert resolve("r", sets).version == "3"  # the newest declaration
    assert resolve("r:2", sets).version == "2" and resolve("r@2", sets).version == "2"
    with pytest.raises(FeatureSetError, match=r"feature set 'r:9' is not declared by the experiment \(declared: r@3, r@2\)"):
        resolve("r:9", sets)
    with pytest.raises(FeatureSetError, match="NAME, NAME:VERSION or NAME@VERSION"):
        resolve("r:", sets)


def test_the_sdk_logs_context_feature_values_under_their_key(tmp_path: Path, serde) -> None:
    spec = with_feature_sets()
    client, delivery = client_with(tmp_path, spec, [5000, 5000])
    context = {"device": "mobile", "recency_bucket": "3"}
    client.assign("exp", "user-1", "site-1", context)
    served = client.assign("exp", "user-2", "site-1", {"visits_7d": "4"}, log=False)
    client.log_exposure(served, {"visits_7d": "4"})
    assert context == {"device": "mobile", "recency_bucket": "3"}  # the caller's dict is left alone
    assert [e["context"] for _, _, e in logged_events(delivery, serde)] == [
        {"device": "mobile", "sluice.fs:recency@2:recency_bucket": "3"}, {"sluice.fs:recency@2:visits_7d": "4"}]


def write_day(root: Path, entity: str, day: str, rows: dict[str, list]) -> Path:
    path = root / entity / f"{day}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


def parquet_set(root: Path, key: str | None = None) -> FeatureSet:
    source = {"parquet": f"{root}/{{entity}}/{{date}}.parquet", "columns": ["ctr", "segment"]}
    return FeatureSet.model_validate({"name": "stats", "version": "1",
                                      "source": source | ({"key": key} if key else {})})


def ms(day: str, hour: int) -> int:
    return int(datetime.fromisoformat(f"{day}T{hour:02d}:30:00").replace(tzinfo=timezone.utc).timestamp() * 1000)


def test_parquet_values_join_by_entity_day_and_unit_and_a_missing_file_is_nulls_with_a_warning(tmp_path: Path) -> None:
    write_day(tmp_path, "site-1", "2026-11-02", {"unit_id": ["u1", "u2"], "ctr": [0.1, 0.2], "segment": ["a", "b"]})
    write_day(tmp_path, "site-1", "2026-11-03", {"unit_id": ["u1"], "ctr": [0.15], "segment": ["a"]})
    write_day(tmp_path, "site-2", "2026-11-02", {"unit_id": ["u1"], "ctr": [0.9], "segment": ["z"], "other": [1]})
    missing: list[MissingFeatureFile] = []
    joiner = FeatureJoiner(parquet_set(tmp_path), missing.append)
    assert joiner.column_names == ["fs.stats.ctr", "fs.stats.segment"]
    got = [joiner.values(e, ms(d, h), u, {}) for e, d, h, u in [
        ("site-1", "2026-11-02", 0, "u1"), ("site-1", "2026-11-02", 23, "u2"), ("site-1", "2026-11-03", 1, "u1"),
        ("site-1", "2026-11-03", 2, "u2"),  # not in that day's file
        ("site-2", "2026-11-02", 5, "u1"), ("site-2", "2026-11-03", 5, "u1"), ("site-2", "2026-11-03", 6, "u1")]]
    assert got == [(0.1, "a"), (0.2, "b"), (0.15, "a"), (None, None), (0.9, "z"), (None, None), (None, None)]
    assert missing == [MissingFeatureFile("stats@1", "site-2", date(2026, 11, 3),
                                          f"{tmp_path}/site-2/2026-11-03.parquet")]  # reported once
    assert "its serves get nulls" in str(missing[0])
    joiner.check_found()


def test_a_file_with_another_key_column_or_without_a_column_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_day(tmp_path, "site-1", "2026-11-02", {"user_id": [7, 8], "ctr": [0.1, 0.2], "segment": ["a", "b"]})
    assert FeatureJoiner(parquet_set(tmp_path, key="user_id")).values("site-1", ms("2026-11-02", 1), "8", {}) == (0.2, "b")
    with pytest.raises(FeatureFileError, match=rf"{path}: feature set stats@1 needs column\(s\) \['unit_id'\]"):
        FeatureJoiner(parquet_set(tmp_path)).values("site-1", ms("2026-11-02", 1), "8", {})
    write_day(tmp_path, "site-1", "2026-11-02", {"unit_id": ["u1", "u1"], "ctr": [0.1, 0.2], "segment": ["a", "b"]})
    with pytest.raises(FeatureFileError, match="key unit_id = 'u1' appears more than once"):
        FeatureJoiner(parquet_set(tmp_path)).values("site-1", ms("2026-11-02", 1), "u1", {})


def test_no_file_at_all_is_an_error(tmp_path: Path) -> None:
    joiner = FeatureJoiner(parquet_set(tmp_path / "nowhere"), lambda m: None)
    assert joiner.values("site-1", ms("2026-11-02", 1), "u1", {}) == (None, None)
    with pytest.raises(FeatureFileError, match=r"stats@1: none of its 1 file\(s\) exists"):
        joiner.check_found()
