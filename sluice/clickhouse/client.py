"""Connecting to ClickHouse: the embedded chDB engine by default, a server when
`CLICKHOUSE_URL` names one. Both are clickhouse-connect clients: same SQL, same API, except
where an insert hands ClickHouse bytes to read itself (`insert_from_bytes`)."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from sluice.errors import SluiceError


class ClickHouseError(SluiceError):
    """ClickHouse could not be reached or refused a statement; the message says which."""


class InsertRefused(ClickHouseError):
    """ClickHouse answered and refused an insert (its data or its statement): nothing of it
    was inserted. Other errors of an insert leave its outcome unknown."""


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


class SerializedClient:
    """A client that several threads share, making one call at a time: the embedded
    engine belongs to one process, so a process that both sinks and answers queries (`sluice
    api` on the embedded engine) shares one client, whose calls must not interleave."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def one_at_a_time(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return one_at_a_time


def _is_embedded(client: Any) -> bool:
    """True when `client` runs the embedded chDB engine in this process."""
    return str(getattr(client, "uri", "")).startswith("chdb://")


def insert_from_bytes(client: Any, insert: str, select: str, data: bytes, fmt: str, structure: str) -> None:
    """Run `insert` (an `INSERT INTO ... SETTINGS ...` clause) with `select`, a SELECT that
    reads `data` where it names `{data}`: bytes in format `fmt` whose columns are `structure`.

    A server reads the bytes from the request body with `input()`. The embedded engine gets
    no request body, so it reads them from a temporary file with `file()`. Raises
    `InsertRefused` with ClickHouse's reason when it refuses the statement, `ClickHouseError`
    when it did not answer.
    """
    if not _is_embedded(client):
        source = f"input({sql_string(structure)})"
        _run_insert(client, f"{insert} {select.replace('{data}', source)} FORMAT {fmt}", data)
        return
    with tempfile.NamedTemporaryFile(prefix="sluice-insert-", suffix=f".{fmt.lower()}", delete=False) as f:
        f.write(data)
    try:
        source = f"file({sql_string(f.name)}, {sql_string(fmt)}, {sql_string(structure)})"
        _run_insert(client, f"{insert} {select.replace('{data}', source)}", None)
    finally:
        os.unlink(f.name)


def _run_insert(client: Any, statement: str, data: bytes | None) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    try:
        client.command(statement, data=data)
    except OperationalError as exc:  # a connection or stream failure: ClickHouse did not answer
        raise ClickHouseError(f"ClickHouse did not answer an insert, which may or may not have landed: {exc}") from exc
    except DatabaseError as exc:
        raise InsertRefused(f"ClickHouse refused the insert: {exc}") from exc


def sql_string(text: str) -> str:
    """`text` as a ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
