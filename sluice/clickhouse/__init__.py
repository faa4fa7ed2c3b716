"""ClickHouse adapter: one client factory for the embedded engine (chDB) and for servers,
and the idempotent migrations of Sluice's tables."""

from sluice.clickhouse.client import ClickHouseError, connect
from sluice.clickhouse.migrations import MIGRATIONS, Migration, migrate

__all__ = ["ClickHouseError", "MIGRATIONS", "Migration", "connect", "migrate"]
