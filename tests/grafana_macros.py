"""Expansion of the Grafana ClickHouse data source's macros, as the plugin does it, so the
dashboards' SQL can run in tests against the real engine.

Follows the plugin's Go implementation (grafana/clickhouse-datasource, pkg/macros/macros.go):
`$__timeFilter(c)` → `c >= toDateTime(from) AND c <= toDateTime(to)` (seconds),
`$__timeFilter_ms(c)` → the same with `fromUnixTimestamp64Milli(ms)`, `$__fromTime`/`$__toTime`
(and `_ms`), `$__dateFilter(c)`, `$__dateTimeFilter(d, t)` (alias `$__dt`),
`$__timeInterval(c)` → `toStartOfInterval(toDateTime(c), INTERVAL n second)`,
`$__timeInterval_ms(c)` and `$__interval_s`. Template variables (`$name`, `${name}`) are
replaced by their text, as Grafana does before the query reaches the plugin.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

_MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")


def expand(sql: str, start: datetime, end: datetime, interval_s: int, variables: dict[str, str]) -> str:
    for name, value in variables.items():
        sql = sql.replace("${" + name + "}", value)
        sql = re.sub(r"\$" + name + r"\b", value, sql)
    fs, ts = int(start.timestamp()), int(end.timestamp())
    fms, tms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    fd, td = start.astimezone(timezone.utc).strftime("%Y-%m-%d"), end.astimezone(timezone.utc).strftime("%Y-%m-%d")

    def one(match: re.Match[str]) -> str:
        name, raw = match.group(1), match.group(2)
        args = [a.strip() for a in raw.split(",")] if raw else []
        if name == "fromTime":
            return f"toDateTime({fs})"
        if name == "toTime":
            return f"toDateTime({ts})"
        if name == "fromTime_ms":
            return f"fromUnixTimestamp64Milli({fms})"
        if name == "toTime_ms":
            return f"fromUnixTimestamp64Milli({tms})"
        if name == "timeFilter":
            return f"{args[0]} >= toDateTime({fs}) AND {args[0]} <= toDateTime({ts})"
        if name == "timeFilter_ms":
            return f"{args[0]} >= fromUnixTimestamp64Milli({fms}) AND {args[0]} <= fromUnixTimestamp64Milli({tms})"
        if name == "dateFilter":
            return f"{args[0]} >= toDate('{fd}') AND {args[0]} <= toDate('{td}')"
        if name in ("dateTimeFilter", "dt"):
            return (f"({args[0]} >= toDate('{fd}') AND {args[0]} <= toDate('{td}')) AND "
                    f"({args[1]} >= toDateTime({fs}) AND {args[1]} <= toDateTime({ts}))")
        if name == "timeInterval":
            return f"toStartOfInterval(toDateTime({args[0]}), INTERVAL {max(interval_s, 1)} second)"
        if name == "timeInterval_ms":
            return f"toStartOfInterval(toDateTime64({args[0]}, 3), INTERVAL {max(interval_s * 1000, 1)} millisecond)"
        if name == "interval_s":
            return str(max(interval_s, 1))
        raise ValueError(f"unknown macro $__{name} in: {sql}")

    return _MACRO.sub(one, sql)


def now() -> datetime:
    return datetime.now(timezone.utc)
