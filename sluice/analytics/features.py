"""A feature set's values for logged serves: what `sluice export --feature-set` and the
demo trainer add to each serve, with one rule.

A context feature set's values are in the serve's logged context already (under the keys
`sluice.core.features` names). A parquet feature set's values are read from the file of
the serve's entity and UTC day and joined on the set's key (the serve's unit id): the
serving path never reads them. A missing file makes that entity-day's values null and is
reported to `on_missing` (by default a logged warning), since a daily job that has not run
yet should not stop an export; no file at all for a whole export is an error (the template
or the mount is wrong). A file without the key or a column, or with a key twice, is an
error naming the file.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from sluice.core.features import column_name, context_values, parquet_path
from sluice.core.spec import FeatureSet
from sluice.errors import SluiceError

log = logging.getLogger(__name__)


class FeatureFileError(SluiceError):
    """A feature file that cannot be joined (unreadable, a column or the key missing, a key
    twice), or no file at all; the message names the file and the feature set."""


@dataclass(frozen=True)
class MissingFeatureFile:
    """A parquet feature set's file that does not exist: its serves get nulls."""

    feature_set: str
    entity: str
    day: date
    path: str

    def __str__(self) -> str:
        return (f"feature set {self.feature_set}: no file for entity {self.entity!r} on {self.day.isoformat()} "
                f"({self.path}); its serves get nulls")


def warn_missing(missing: MissingFeatureFile) -> None:
    log.warning("%s", missing)


class FeatureJoiner:
    """The values of one feature set for serves, one tuple per serve in the set's column order.

    Parquet files are read once per (entity, day) while serves come grouped by entity and in
    time order (the export's order; the last `keep_files` files are kept)."""

    def __init__(self, feature_set: FeatureSet, on_missing: Callable[[MissingFeatureFile], None] = warn_missing,
                 keep_files: int = 8) -> None:
        self.feature_set = feature_set
        self.on_missing = on_missing
        self.keep_files = keep_files
        self._files: OrderedDict[tuple[str, date], dict[str, tuple[Any, ...]] | None] = OrderedDict()
        self.files_found = 0
        self.files_missing = 0

    @property
    def column_names(self) -> list[str]:
        """The dataset's columns for this set (`fs.<name>.<column>`)."""
        return [column_name(self.feature_set, c) for c in self.feature_set.columns]

    def values(self, entity: str, timestamp_ms: int, unit_id: str, context: Mapping[str, str]) -> tuple[Any, ...]:
        """The set's values for one serve (None where there is none)."""
        if self.feature_set.source.context is not None:
            return context_values(self.feature_set, context)
        day = datetime.fromtimestamp(timestamp_ms / 1000, timezone.utc).date()
        rows = self._day(entity, day)
        found = None if rows is None else rows.get(unit_id)
        return found if found is not None else (None,) * len(self.feature_set.columns)

    def check_found(self) -> None:
        """Raise when a parquet set was looked up and not one of its files exists."""
        if self.files_missing and not self.files_found:
            raise FeatureFileError(
                f"feature set {self.feature_set.ref}: none of its {self.files_missing} file(s) exists (template "
                f"{self.feature_set.source.parquet!r}); check the template and where it is mounted")

    def _day(self, entity: str, day: date) -> dict[str, tuple[Any, ...]] | None:
        key = (entity, day)
        if key in self._files:
            self._files.move_to_end(key)
            return self._files[key]
        rows = self._read(entity, day)
        self._files[key] = rows
        if len(self._files) > self.keep_files:
            self._files.popitem(last=False)
        return rows

    def _read(self, entity: str, day: date) -> dict[str, tuple[Any, ...]] | None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyarrow import fs as pafs

        fs = self.feature_set
        path = parquet_path(fs, entity, day)
        try:
            filesystem, where = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
            if filesystem.get_file_info(where).type == pafs.FileType.NotFound:
                self.files_missing += 1
                self.on_missing(MissingFeatureFile(fs.ref, entity, day, path))
                return None
            names = pq.read_schema(where, filesystem=filesystem).names
            lacking = [c for c in (fs.source.key_column, *fs.columns) if c not in names]
            if lacking:
                raise FeatureFileError(f"{path}: feature set {fs.ref} needs column(s) {lacking}; the file has {names}")
            table = pq.read_table(where, columns=[fs.source.key_column, *fs.columns], filesystem=filesystem)
        except (OSError, pa.ArrowException) as exc:
            raise FeatureFileError(f"{path}: feature set {fs.ref}'s file cannot be read: {exc}") from exc
        self.files_found += 1
        keys = [str(k) for k in table.column(0).to_pylist()]
        columns = [table.column(i + 1).to_pylist() for i in range(len(fs.columns))]
        rows = dict(zip(keys, zip(*columns)))
        if len(rows) != len(keys):
            twice = Counter(keys).most_common(1)[0][0]
            raise FeatureFileError(f"{path}: key {fs.source.key_column} = {twice!r} appears more than once; a file "
                                   f"holds one row per {fs.source.key_column}")
        return rows
