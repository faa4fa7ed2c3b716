"""Experimental features end to end, on the real broker and the embedded ClickHouse engine:
an experiment declares a context feature set and a parquet one; the SDK logs the context
set's column under its versioned key; the sink lands the serves; `sluice export
--feature-set` gives both sets' columns joined per entity and day (nulls, and a warning, for
the day whose file is missing); the demo trainer trains a model that declares a set on that
set's columns and the production model on the base context alone."""

from __future__ import annotations

import json
import sys
from datetime import datetime, time as clock, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.analytics.export import COLUMNS, ExportError, export
from sluice.analytics.features import MissingFeatureFile
from sluice.client import SluiceClient
from sluice.clickhouse import migrate
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from streams.sink.sink import ClickHouseSink

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sidecar_support import publish_table  # noqa: E402
from stream_support import bandit_spec  # noqa: E402

pytestmark = pytest.mark.integration
SITES = ["site-1", "site-2"]
SERVES_PER_DAY = 150
UNITS = 50


def segment(site: str, day: int, unit: int) -> str | None:
    """What the daily statistics job wrote for a unit: it changes from day to day and site to
    site, so a join on the wrong day or entity shows; site-2 has no file for the second day."""
    if site == "site-2":
        return None if day == 1 else "CD"[unit % 2]
    return "AB"[(unit + day) % 2]


def test_feature_sets_are_logged_joined_per_entity_and_day_and_seen_only_by_models_that_declare_them(
        kafka_bootstrap, topic_prefix, serde, clickhouse, database, tmp_path, monkeypatch) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=2))
    template = str(tmp_path / "stats" / "{entity}" / "{date}.parquet")
    spec = bandit_spec("ranking", ["production", "candidate"], entities=SITES, models={"parameter": "model"},
                       feature_sets=[{"name": "recency", "version": 2, "source": {"context": ["recency"]}},
                                     {"name": "stats", "version": 1,
                                      "source": {"parquet": template, "columns": ["segment"]}}])
    with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as experiments:
        experiments.apply(spec)
    for site in SITES:
        publish_table(kafka_bootstrap, topic_prefix, serde, spec, site, [5000, 5000], version=1)
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=2), today - timedelta(days=1)]
    for site in SITES:
        for d, day in enumerate(days):
            rows = [(f"u{k}", segment(site, d, k)) for k in range(UNITS)]
            if rows[0][1] is not None:
                path = Path(template.format(entity=site, date=day.isoformat()))
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table({"unit_id": [u for u, _ in rows], "segment": [s for _, s in rows]}), path)

    # The service passes the new feature in the context it passes already: no new key or store.
    rng = np.random.default_rng(7)
    expected: dict[str, tuple[str, int, int, str, str]] = {}
    client = SluiceClient.connect(kafka_bootstrap, prefix=topic_prefix, state_dir=tmp_path / "sdk")
    try:
        assert client.live
        for site in SITES:
            for d, day in enumerate(days):
                midnight = int(datetime.combine(day, clock(), timezone.utc).timestamp() * 1000)
                for j in range(SERVES_PER_DAY):
                    ts, fresh, device = midnight + j * 9 * 60_000, j % 4 < 2, "mobile" if j % 2 else "desktop"
                    recency = "fresh" if fresh else "stale"
                    served = client.assign("ranking", f"u{j % UNITS}", site, {"device": device, "recency": recency},
                                           timestamp_ms=ts)
                    assert served.in_experiment
                    expected[served.serve_id] = (site, d, j % UNITS, recency, device)
                    if rng.random() < (0.6 if fresh else 0.05):  # the new feature predicts the click; device does not
                        client.log_reward(served, 1.0, timestamp_ms=ts + 1000)
        assert client.delivery.flush(60)
    finally:
        client.close()

    migrate(clickhouse, database=database)
    ClickHouseSink(kafka_bootstrap, clickhouse, serde, names, database=database,
                   group_id=f"{topic_prefix}-sink").run(stop_when_idle_s=3)
    logged = clickhouse.query(f"SELECT DISTINCT mapKeys(context) FROM {database}.serves").result_rows
    assert logged == [(["device", "sluice.fs:recency@2:recency"],)]  # under the set's versioned key only

    missing: list[MissingFeatureFile] = []
    out = tmp_path / "dataset.parquet"
    n = export(clickhouse, "ranking", out, "parquet", database=database, feature_sets=["recency", "stats:1"],
               on_missing=missing.append)
    assert n == len(expected) == 2 * 2 * SERVES_PER_DAY
    table = pq.read_table(out)
    assert table.schema.names == COLUMNS + ["fs.recency.recency", "fs.stats.segment"]
    for row in table.to_pylist():
        site, d, unit, recency, device = expected[row["serve_id"]]
        assert (row["entity"], row["unit_id"], row["timestamp"].date()) == (site, f"u{unit}", days[d])
        assert (row["fs.recency.recency"], row["fs.stats.segment"]) == (recency, segment(site, d, unit)), row
        assert json.loads(row["context"]) == {"device": device}  # the context column is the production model's
    assert missing == [MissingFeatureFile("stats@1", "site-2", days[1],
                                          template.format(entity="site-2", date=days[1].isoformat()))]
    plain = tmp_path / "plain.parquet"
    export(clickhouse, "ranking", plain, "parquet", database=database)
    assert pq.read_table(plain).schema.names == COLUMNS
    with pytest.raises(ExportError, match=r"feature set 'clicks' is not declared by the experiment "
                                          r"\(declared: recency@2, stats@1\)"):
        export(clickhouse, "ranking", out, "parquet", database=database, feature_sets=["clicks"])

    from services.demo_trainer import train

    monkeypatch.setenv("KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SLUICE_TRAINING_PREFIX", topic_prefix)
    monkeypatch.setenv("SLUICE_MODELS_DIR", str(tmp_path / "models"))

    def trained(feature_set: str, version: str) -> dict[str, tuple[dict, dict[str, float]]]:
        """Entity → (the result's model, its coefficient per feature), for a job of a model
        registered with `feature_set@version` (the scheduler copies it from the registry)."""
        result = train({"job_id": f"j-{feature_set}", "attempt": 1, "model_type": "gbdt", "window_days": 28.0,
                        "feature_set": feature_set, "feature_set_version": version,
                        "members": [{"entity": site} for site in SITES]})
        models = {}
        for m in result["models"]:
            saved = np.load(Path(m["artifact_uri"].removeprefix("file://")))
            models[m["entity"]] = (m, dict(zip(saved["features"].tolist(), saved["coefficients"].tolist())))
        return models

    production = trained("clicks", "3")  # not a set of this experiment: the base context only
    with_recency = trained("recency", "2")
    with_stats = trained("stats", "1")
    base = {"device=desktop", "device=mobile", "intercept"}
    for site in SITES:
        assert set(production[site][1]) == base
        assert set(with_recency[site][1]) == base | {"fs.recency.recency=fresh", "fs.recency.recency=stale"}
        assert set(with_stats[site][1]) == base | {f"fs.stats.segment={s}" for s in "ABCD"}
        weights = with_recency[site][1]
        assert weights["fs.recency.recency=fresh"] > weights["fs.recency.recency=stale"] + 1.0
        assert with_recency[site][0]["metrics"]["auc"] > production[site][0]["metrics"]["auc"] + 0.2
        assert with_recency[site][0]["rows"] == production[site][0]["rows"] == 2 * SERVES_PER_DAY
