"""Connecting to ClickHouse: the embedded chDB engine by default, a server when
`CLICKHOUSE_URL` names one. Both are clickhouse-connect clients: same SQL, same API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sluice.errors import SluiceError


class ClickHouseError(SluiceError):
    """ClickHouse could not be reached or refused a statement; the message says which."""


def connect(url: str | None = None, *, path: Path | None = None) -> Any:
    """A clickhouse-connect client for `url` (http(s)://…) or, when `url` is None, the
    embedded engine with its data under `path`.

    chDB runs inside this process and holds its data directory for the life of the process,
    so one process should use one `path`.
    """
    import clickhouse_connect  # deferred: importing it loads the chDB engine (~1 s)

    try:
        if url:
            return clickhouse_connect.get_client(dsn=url)
        if path is None:
            raise ClickHouseError("neither a ClickHouse URL nor an embedded data path was given")
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{path.resolve()}")
    except ClickHouseError:
        raise
    except Exception as exc:  # clickhouse-connect raises its own and OS errors
        where = url or f"embedded engine at {path}"
        hint = "" if url else " (only one process at a time can open the embedded engine's data: stop the other one, or use CLICKHOUSE_URL)"
        raise ClickHouseError(f"cannot connect to ClickHouse ({where}): {exc}{hint}") from exc
