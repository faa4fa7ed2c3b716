"""Build the Grafana dashboards of Sluice: `python dashboards/build.py` writes dashboards/*.json.

The panels' SQL lives here, readable, instead of inside hand-edited JSON; the test suite
checks that the committed JSON is what this script writes, runs every ClickHouse query (with
the plugin's macros expanded) against the real engine, and checks every PromQL expression
with promtool. Time axes are event time: `serves.timestamp`, `rewards.timestamp` and the
`window_end` of weight tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CH = {"type": "grafana-clickhouse-datasource", "uid": "sluice-clickhouse"}
PROM = {"type": "prometheus", "uid": "sluice-prometheus"}
DB = "sluice"
SCOPE = "experiment_id = '${experiment}' AND entity = '${entity}'"


def variable(name: str, sql: str, label: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": CH, "query": sql, "refresh": 2,
            "includeAll": False, "multi": False, "sort": 1}


def sql_panel(title: str, sql: str, kind: str, columns: list[str], *, x: int, y: int, w: int = 12, h: int = 8,
              description: str = "", fmt: int = 0) -> dict[str, Any]:
    """A panel on ClickHouse; `columns` are the columns it plots (checked by the tests).
    fmt: the plugin's format, 0 = time series, 1 = table."""
    return {"type": kind, "title": title, "description": description, "datasource": CH,
            "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "targets": [{"refId": "A", "datasource": CH, "editorType": "sql", "format": fmt, "rawSql": sql.strip(),
                         "queryType": "timeseries" if fmt == 0 else "table"}],
            "sluice": {"columns": columns}}


def prom_panel(title: str, exprs: dict[str, str], *, x: int, y: int, w: int = 12, h: int = 8, unit: str = "") -> dict[str, Any]:
    return {"type": "timeseries", "title": title, "datasource": PROM, "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(65 + i), "datasource": PROM, "expr": e, "legendFormat": legend}
                        for i, (legend, e) in enumerate(exprs.items())]}


def dashboard(uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]],
              time_from: str = "now-14d") -> dict[str, Any]:
    for i, p in enumerate(panels, 1):
        p["id"] = i
    return {"uid": uid, "title": title, "tags": ["sluice"], "timezone": "utc", "schemaVersion": 39, "version": 1,
            "editable": True, "time": {"from": time_from, "to": "now"}, "refresh": "10s",
            "templating": {"list": variables}, "panels": panels}


EXPERIMENT = variable("experiment", f"SELECT DISTINCT experiment_id FROM {DB}.weights ORDER BY experiment_id",
                      "experiment")
ENTITY = variable("entity", f"SELECT DISTINCT entity FROM {DB}.weights WHERE experiment_id = '${{experiment}}' "
                  "ORDER BY entity", "entity")

WILSON = "(p + 1.9208 / n - 1.96 * sqrt(p * (1 - p) / n + 0.9604 / (n * n))) / (1 + 3.8416 / n)"
WILSON_UP = "(p + 1.9208 / n + 1.96 * sqrt(p * (1 - p) / n + 0.9604 / (n * n))) / (1 + 3.8416 / n)"

# Serves of the entity with the reward the stream worker's rules attribute to each, by the
# experiment's spec (the parameterized view of sluice.clickhouse.migrations, version 3).
ATTRIBUTED = f"""
    SELECT timestamp, toStartOfDay(timestamp) AS day, arm, reward
    FROM {DB}.attributed_serves(experiment = '${{experiment}}')
    WHERE entity = '${{entity}}' AND in_experiment AND $__timeFilter(timestamp)"""


def overview() -> dict[str, Any]:
    panels = [
        sql_panel("Traffic split: serves per arm", f"""
SELECT $__timeInterval(hour) AS time, arm, sum(serves) AS serves
FROM {DB}.serves_hourly
WHERE {SCOPE} AND $__timeFilter(hour)
GROUP BY time, arm ORDER BY time""", "timeseries", ["time", "arm", "serves"], x=0, y=0,
                  description="From the hourly materialized view serves_hourly."),
        sql_panel("Weights of the published tables", f"""
SELECT window_end AS time, arm, weight
FROM {DB}.weights
WHERE {SCOPE} AND $__timeFilter(window_end)
ORDER BY time""", "timeseries", ["time", "arm", "weight"], x=12, y=0),
        sql_panel("Reward rate per arm over the window, with 95 % Wilson band", f"""
SELECT time, arm, p AS rate, {WILSON} AS lower, {WILSON_UP} AS upper
FROM (
    SELECT window_end AS time, arm, least(sum, toFloat64(count)) / count AS p, toFloat64(count) AS n
    FROM {DB}.weights
    WHERE {SCOPE} AND count > 0 AND $__timeFilter(window_end)
)
ORDER BY time""", "timeseries", ["time", "arm", "rate", "lower", "upper"], x=0, y=8,
                  description="Windowed statistics of each published table (sum / count), event time. A table "
                              "can hold clicks of serves not yet read; they are capped at the serves, as the "
                              "worker's posterior caps them."),
        sql_panel("P(best) of each arm (Thompson policy output)", f"""
SELECT window_end AS time, arm,
       toFloat64OrZero(arrayFirst(g -> g[1] = arm,
           extractAllGroups(reason, '[:,] ([^=,; ]+)=([0-9.e+-]+)'))[2]) AS p_best
FROM {DB}.weights
WHERE {SCOPE} AND policy = 'thompson' AND $__timeFilter(window_end)
ORDER BY time""", "timeseries", ["time", "arm", "p_best"], x=12, y=8,
                  description="Exact Thompson probabilities before guardrails, as the table's reason records them."),
        sql_panel("Cumulative reward and estimated regret against each day's best arm", f"""
WITH means AS (SELECT day, arm, avg(reward) AS m FROM ({ATTRIBUTED}) GROUP BY day, arm),
     best AS (SELECT day, max(m) AS best_mean FROM means GROUP BY day)
SELECT time,
       sum(reward) OVER (ORDER BY time) AS cumulative_reward,
       sum(regret) OVER (ORDER BY time) AS cumulative_regret
FROM (
    SELECT $__timeInterval(a.timestamp) AS time, sum(a.reward) AS reward, sum(b.best_mean - m.m) AS regret
    FROM ({ATTRIBUTED}) AS a
    INNER JOIN means AS m ON m.day = a.day AND m.arm = a.arm
    INNER JOIN best AS b ON b.day = a.day
    GROUP BY time
)
ORDER BY time""", "timeseries", ["time", "cumulative_reward", "cumulative_regret"], x=0, y=16,
                  description="Rewards attributed by the worker's rules and the spec; regret: per serve, the mean "
                              "of the day's best arm minus the served arm's mean that day (UTC days)."),
        sql_panel("SRM check: share of serves against weight, latest window", f"""
SELECT arm, serves / sum(serves) OVER () AS serve_share, weight, serve_share - weight AS difference
FROM (
    SELECT arm, argMax(count, version) AS serves, argMax(weight, version) AS weight
    FROM {DB}.weights WHERE {SCOPE}
    GROUP BY arm
)
ORDER BY arm""", "table", ["arm", "serve_share", "weight", "difference"], x=12, y=16, fmt=1,
                  description="Under a fixed split the shares match the weights; the worker's sluice_srm_p_value "
                              "tests it (alert SluiceSampleRatioMismatch)."),
        sql_panel("Current decision", f"""
SELECT timestamp, verdict, winner, rule, reason
FROM {DB}.decisions
WHERE experiment_id = '${{experiment}}' AND (entity = '${{entity}}' OR entity IS NULL)
ORDER BY timestamp DESC LIMIT 1""", "table", ["timestamp", "verdict", "winner", "rule", "reason"],
                  x=0, y=24, w=24, h=5, fmt=1),
        sql_panel("Offline evaluation: what other policies would have earned on this traffic", f"""
SELECT target, estimator, estimate, lower, upper, effective_sample_size, support_deficit, n_rounds,
       window_start, window_end, computed_at
FROM {DB}.offline_evaluations
WHERE {SCOPE} AND computed_at = (
    SELECT max(computed_at) FROM {DB}.offline_evaluations WHERE {SCOPE})
ORDER BY target, estimator""", "table",
                  ["target", "estimator", "estimate", "lower", "upper", "effective_sample_size", "support_deficit",
                   "n_rounds", "window_start", "window_end", "computed_at"], x=0, y=29, w=24, h=8, fmt=1,
                  description="The sink's latest continuous off-policy evaluation (sluice sink "
                              "--evaluate-every-hours; targets from the spec's evaluation section). A target "
                              "whose interval lies above the live policy's would have earned more; a small "
                              "effective sample size or a support deficit means the log says little about it."),
    ]
    return dashboard("sluice-experiment", "Sluice / experiment overview", panels, [EXPERIMENT, ENTITY])


def entity_view() -> dict[str, Any]:
    entity = variable("entity", f"SELECT DISTINCT entity FROM {DB}.weights ORDER BY entity", "entity")
    panels = [
        sql_panel("Traffic and performance across experiments and arms, at the end of the range", f"""
SELECT experiment_id, arm, argMax(weight, version) AS weight, argMax(serves, version) AS serves,
       argMax(count, version) AS observations,
       if(observations = 0, 0, argMax(sum, version) / observations) AS reward_rate,
       max(window_end) AS as_of
FROM {DB}.weights
WHERE entity = '${{entity}}' AND window_end <= $__toTime
GROUP BY experiment_id, arm
ORDER BY experiment_id, arm""", "table", ["experiment_id", "arm", "weight", "serves", "observations",
                                          "reward_rate", "as_of"], x=0, y=0, w=24, h=10, fmt=1,
                  description="Pick the point in time with the end of the time range."),
        sql_panel("Serves of the entity per experiment and arm", f"""
SELECT $__timeInterval(timestamp) AS time, concat(experiment_id, ' / ', arm) AS series, count() AS serves
FROM {DB}.serves
WHERE entity = '${{entity}}' AND $__timeFilter(timestamp)
GROUP BY time, series ORDER BY time""", "timeseries", ["time", "series", "serves"], x=0, y=10, w=24),
    ]
    return dashboard("sluice-entity", "Sluice / entity view", panels, [entity])


def health() -> dict[str, Any]:
    panels = [
        sql_panel("Error rate per arm (rewards that report one)", f"""
SELECT $__timeInterval(r.timestamp) AS time, s.arm AS arm, avg(toFloat64(r.error)) AS error_rate
FROM {DB}.rewards AS r INNER JOIN {DB}.serves AS s ON s.serve_id = r.serve_id
WHERE r.experiment_id = '${{experiment}}' AND r.error IS NOT NULL AND $__timeFilter(r.timestamp)
GROUP BY time, arm ORDER BY time""", "timeseries", ["time", "arm", "error_rate"], x=0, y=0),
        sql_panel("Latency p95 per arm", f"""
SELECT $__timeInterval(r.timestamp) AS time, s.arm AS arm, quantile(0.95)(r.latency_ms) AS latency_p95_ms
FROM {DB}.rewards AS r INNER JOIN {DB}.serves AS s ON s.serve_id = r.serve_id
WHERE r.experiment_id = '${{experiment}}' AND r.latency_ms IS NOT NULL AND $__timeFilter(r.timestamp)
GROUP BY time, arm ORDER BY time""", "timeseries", ["time", "arm", "latency_p95_ms"], x=12, y=0),
        prom_panel("Consumer lag of the stream workers", {
            "{{topic}}": "sum by (topic) (sluice_stream_consumer_lag_messages)"}, x=0, y=8),
        prom_panel("Dead-letter rate by reason", {
            "{{reason}}": "sum by (reason) (rate(sluice_stream_rejected_total[5m]))"}, x=12, y=8, unit="reqps"),
        prom_panel("Freshness of weights (input on Kafka -> table published)", {
            "p50": "histogram_quantile(0.5, sum by (le) (rate(sluice_weights_freshness_seconds_bucket[5m])))",
            "p95": "histogram_quantile(0.95, sum by (le) (rate(sluice_weights_freshness_seconds_bucket[5m])))",
            "age of the newest table": "time() - max(sluice_weights_last_published_timestamp_seconds)",
        }, x=0, y=16, unit="s"),
        prom_panel("Sidecar requests and p99 latency", {
            "{{status}} req/s": "sum by (status) (rate(sluice_sidecar_requests_total[1m]))",
            "p99 s": "histogram_quantile(0.99, sum by (le) (rate(sluice_sidecar_request_duration_seconds_bucket[1m])))",
        }, x=12, y=16),
        prom_panel("Serve delivery", {
            "delivered/s": "sum(rate(sluice_serves_delivered_total[1m]))",
            "spilled/s": "sum(rate(sluice_serves_spilled_total[1m]))",
            "dropped/s": "sum(rate(sluice_serves_dropped_total[1m]))",
        }, x=0, y=24, w=24),
    ]
    return dashboard("sluice-health", "Sluice / health", panels, [EXPERIMENT], time_from="now-6h")


def event_log() -> dict[str, Any]:
    arm = variable("arm", f"SELECT DISTINCT arm FROM {DB}.serves WHERE experiment_id = '${{experiment}}' ORDER BY arm",
                   "arm")
    arm["includeAll"], arm["allValue"] = True, ""
    panels = [
        sql_panel("Serves and rewards", f"""
SELECT * FROM (
    SELECT timestamp, 'serve' AS kind, entity, unit_id, arm, serve_id, propensity AS value, weights_version
    FROM {DB}.serves
    WHERE {SCOPE} AND ('${{arm}}' = '' OR arm = '${{arm}}') AND $__timeFilter(timestamp)
    UNION ALL
    SELECT r.timestamp, concat('reward:', r.name), r.entity, s.unit_id, s.arm, r.serve_id, r.value, s.weights_version
    FROM {DB}.rewards AS r INNER JOIN {DB}.serves AS s ON s.serve_id = r.serve_id
    WHERE r.experiment_id = '${{experiment}}' AND r.entity = '${{entity}}'
      AND ('${{arm}}' = '' OR s.arm = '${{arm}}') AND $__timeFilter(r.timestamp)
)
ORDER BY timestamp DESC LIMIT 500""", "table",
                  ["timestamp", "kind", "entity", "unit_id", "arm", "serve_id", "value", "weights_version"],
                  x=0, y=0, w=24, h=20, fmt=1),
    ]
    return dashboard("sluice-events", "Sluice / event log", panels, [EXPERIMENT, ENTITY, arm], time_from="now-2d")


DASHBOARDS = {"experiment-overview": overview, "entity-view": entity_view, "health": health, "event-log": event_log}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for name in DASHBOARDS:
        (HERE / f"{name}.json").write_text(render(name))
        print(HERE / f"{name}.json")


if __name__ == "__main__":
    main()
