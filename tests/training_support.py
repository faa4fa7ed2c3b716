"""Trainer entry points for the tests: importable in the trainer's pool processes."""

from __future__ import annotations

from typing import Any


def fit(job: dict[str, Any]) -> dict[str, Any]:
    """A model per member, as a real trainer reports them (the training itself is elsewhere)."""
    return {"transform_ms": 120, "train_ms": 340, "models": [
        {"entity": m["entity"], "artifact_uri": f"file:///models/{job['model_type']}/{m['entity']}/{job['job_id']}",
         "rows": m["rows"], "data_start_ms": 0, "data_end_ms": 1, "dataset_fingerprint": f"sha256:{job['job_id'][:8]}",
         "metrics": {"auc": 0.7}} for m in job["members"]]}


def flaky(job: dict[str, Any]) -> dict[str, Any]:
    """Fails its first attempt (a lost connection to the feature store), then trains."""
    if job["attempt"] == 1:
        raise ConnectionError("feature store unreachable")
    return fit(job)


def broken(job: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("no training data for this window")
