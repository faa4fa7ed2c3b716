"""The control API's results on the real broker and the embedded ClickHouse, which the API
process holds and fills with its own sink: an entity's latest table, statistics, P(best),
decision and alerts, and the weights in force at past moments from the table history."""

from __future__ import annotations

import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from sluice.core.allocation import Allocation
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.clients import entity_key
from sluice.kafka.io import AvroProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from api_support import ApiServer, check_answer, create_token  # noqa: E402
from stream_support import bandit_spec  # noqa: E402

pytestmark = pytest.mark.integration
HOUR_MS = 3_600_000
RESULTS = "/v1/experiments/{experiment_id}/results"
AS_OF = "/v1/experiments/{experiment_id}/as-of"


def weight_table(spec: Any, entity: str, version: int, buckets: list[int], counts: list[int], sums: list[float],
                 computed_at: int) -> dict[str, Any]:
    """A WeightTable as the worker publishes it: bucket counts per arm and the window's statistics."""
    allocation = Allocation.contiguous(buckets, spec.num_buckets)
    return {"event_id": str(uuid.uuid4()), "experiment_id": spec.id, "entity": entity, "version": version,
            "num_buckets": spec.num_buckets, "arms": allocation.to_arm_weights(spec.arm_names), "policy": "thompson",
            "reason": f"version {version} of a test", "window_start": computed_at - 24 * HOUR_MS,
            "window_end": computed_at, "computed_at": computed_at,
            "statistics": [{"arm": a, "serves": n, "count": n, "sum": s, "sum_squares": s}
                           for a, n, s in zip(spec.arm_names, counts, sums)]}


@pytest.fixture(scope="module")
def published(kafka_bootstrap, serde, tmp_path_factory):
    """An API with results on, an experiment, and two weight tables, a decision and an alert
    of entity site-1 on the topics; returns the API, a read token, the spec and the times."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    names = TopicNames(prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=3))
    writer = create_token(kafka_bootstrap, prefix, "writer", "write")["secret"]
    reader = create_token(kafka_bootstrap, prefix, "analyst", "read")["secret"]
    server = ApiServer(kafka_bootstrap, prefix, tmp_path_factory.mktemp("api"))
    server.wait_ready()
    spec = bandit_spec("ranking", ["a", "b", "c"])
    assert server.request("POST", "/v1/experiments", spec.model_dump(mode="json"), token=writer)[0] == 201
    now = int(time.time() * 1000)
    first, second = now - 2 * HOUR_MS, now - HOUR_MS
    producer = AvroProducer(kafka_bootstrap, serde)
    key = entity_key(spec.id, "site-1")
    producer.send(names.weights, key, "WeightTable",
                  weight_table(spec, "site-1", 1, [3334, 3333, 3333], [100, 100, 100], [10, 20, 30], first))
    producer.send(names.weights, key, "WeightTable",
                  weight_table(spec, "site-1", 2, [1000, 2000, 7000], [400, 400, 400], [40, 80, 160], second))
    producer.send(names.decisions, spec.id.encode(), "Decision", {
        "event_id": str(uuid.uuid4()), "experiment_id": spec.id, "entity": "site-1", "verdict": "CONTINUE",
        "winner": None, "rule": "keep_learning", "reason": "P(best) of c is 0.99, below 0.995", "arm_actions": [],
        "statistics": [], "changes": None, "timestamp": second})
    producer.send(names.alerts, spec.id.encode(), "Alert", {
        "event_id": str(uuid.uuid4()), "experiment_id": spec.id, "entity": "site-1", "arm": "b", "kind": "LATENCY",
        "severity": "WARNING", "value": 140.0, "threshold": 120.0, "message": "b: p95 latency 140 ms above 120 ms",
        "weights_version": 2, "guardrail": "latency", "action": "alert", "timestamp": second})
    producer.flush()
    yield server, reader, spec, first, second
    server.stop()


def test_an_entitys_results_are_its_latest_table_with_statistics_decision_and_alerts(published) -> None:
    server, reader, spec, _, second = published
    deadline = time.monotonic() + 60
    while (answer := server.request("GET", "/v1/experiments/ranking/results?entity=site-1", token=reader))[0] == 404 \
            or answer[1]["decision"] is None or not answer[1]["alerts"]:
        assert time.monotonic() < deadline, f"the sink inside the API did not land the results: {answer[1]}"
        time.sleep(0.2)
    status, body, _ = answer
    check_answer("GET", RESULTS, status, body)
    weights = body["weights"]
    assert (weights["version"], weights["computed_at_ms"]) == (2, second)
    assert [(a["arm"], a["weight"], a["count"], a["mean"]) for a in weights["arms"]] == [
        ("a", 0.1, 400, 0.1), ("b", 0.2, 400, 0.2), ("c", 0.7, 400, 0.4)]
    stats = {a["arm"]: a for a in body["statistics"]["arms"]}
    assert body["statistics"]["control"] == "a"
    assert stats["c"]["p_best"] > 0.99 and sum(a["p_best"] for a in stats.values()) == pytest.approx(1)
    assert all(a["lower"] < a["mean"] < a["upper"] for a in stats.values())
    assert (body["decision"]["verdict"], body["decision"]["rule"]) == ("CONTINUE", "keep_learning")
    assert [(a["arm"], a["kind"]) for a in body["alerts"]] == [("b", "LATENCY")]


def test_as_of_gives_the_table_in_force_at_each_past_moment(published) -> None:
    server, reader, _, first, second = published
    deadline = time.monotonic() + 60
    while server.request("GET", f"/v1/experiments/ranking/as-of?entity=site-1&at={second}", token=reader)[0] != 200:
        assert time.monotonic() < deadline, "the second table never landed"
        time.sleep(0.2)
    iso = datetime.fromtimestamp((first + 1000) / 1000, tz=timezone.utc).isoformat()
    for at, version, means in [(first, 1, [0.1, 0.2, 0.3]), (second - 1, 1, [0.1, 0.2, 0.3]), (second, 2, [0.1, 0.2, 0.4]),
                               (second + HOUR_MS, 2, [0.1, 0.2, 0.4])]:
        status, body, _ = server.request("GET", f"/v1/experiments/ranking/as-of?entity=site-1&at={at}", token=reader)
        check_answer("GET", AS_OF, status, body)
        assert (status, body["weights"]["version"]) == (200, version), at
        assert [a["mean"] for a in body["weights"]["arms"]] == means
    status, body, _ = server.request("GET", f"/v1/experiments/ranking/as-of?entity=site-1&at={iso.replace('+', '%2B')}",
                                     token=reader)
    assert (status, body["weights"]["version"], body["at_ms"]) == (200, 1, first + 1000)
    for query, status, words in [(f"entity=site-1&at={first - 1}", 404, "at or before"),
                                 ("entity=site-1&at=yesterday", 400, "query parameter 'at'"),
                                 ("entity=site-1&at=2026-11-30T10:00:00", 400, "timezone"),
                                 ("entity=site-1", 400, "'at' is required"),
                                 (f"entity=site-1&entity=x&at={second}", 400, "'entity' is given 2 times"),
                                 (f"entity=site-9&at={second}", 404, "entity 'site-9'")]:
        got, body, _ = server.request("GET", f"/v1/experiments/ranking/as-of?{query}", token=reader)
        check_answer("GET", AS_OF, got, body)
        assert got == status and words in body["error"], (query, body)
    status, body, _ = server.request("GET", "/v1/experiments/nope/results?entity=site-1", token=reader)
    assert status == 404 and "'nope' is not on" in body["error"]


def test_history_gives_each_tables_weights_and_p_best_oldest_first(published) -> None:
    server, reader, _, first, second = published
    deadline = time.monotonic() + 60
    while (answer := server.request("GET", "/v1/experiments/ranking/history?entity=site-1", token=reader))[0] == 404 \
            or len(answer[1]["tables"]) < 2:
        assert time.monotonic() < deadline, f"the sink inside the API did not land both tables: {answer[1]}"
        time.sleep(0.2)
    status, body, _ = answer
    check_answer("GET", "/v1/experiments/{experiment_id}/history", status, body)
    assert body["arms"] == ["a", "b", "c"]
    assert [(t["version"], t["computed_at_ms"]) for t in body["tables"]] == [(1, first), (2, second)]
    assert body["tables"][1]["weights"] == {"a": 0.1, "b": 0.2, "c": 0.7}
    p_best = [t["p_best"] for t in body["tables"]]
    assert all(sum(p.values()) == pytest.approx(1) for p in p_best)
    assert p_best[0]["c"] < p_best[1]["c"] and p_best[1]["c"] > 0.99  # 30 vs 160 successes of 100 vs 400
    assert body["regret"] == {"hours_ms": [], "experiment": [], "equal_split": []}  # no serve landed
    status, body, _ = server.request("GET", "/v1/experiments/ranking/history?entity=site-9", token=reader)
    check_answer("GET", "/v1/experiments/{experiment_id}/history", status, body)
    assert status == 404 and "entity 'site-9'" in body["error"]
