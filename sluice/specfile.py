"""Read an experiment spec from a file: the I/O half of `sluice.core.spec.load_spec`."""

from __future__ import annotations

from pathlib import Path

from sluice.core.spec import ExperimentSpec, SpecError, load_spec


def load_spec_file(path: str | Path) -> ExperimentSpec:
    """Load and validate the YAML experiment spec at `path`; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read experiment spec {path}: {exc.strerror or exc}") from exc
    try:
        return load_spec(text)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}", exc.problems) from None
