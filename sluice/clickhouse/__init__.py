"""ClickHouse adapter: one client factory for the embedded engine (chDB) and for servers,
and the idempotent migrations of Sluice's tables."""

from sluice.clickhouse.client import (
    ClickHouseError,
    InsertRefused,
    SerializedClient,
    connect,
    insert_from_bytes,
    sql_string,
)
from sluice.clickhouse.migrations import MIGRATIONS, Migration, migrate

__all__ = ["ClickHouseError", "InsertRefused", "MIGRATIONS", "Migration", "SerializedClient", "connect", "insert_from_bytes",
           "migrate", "sql_string"]
