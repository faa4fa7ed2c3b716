"""Errors of the MLflow bridge."""

from __future__ import annotations

from sluice.errors import SluiceError


class MlflowError(SluiceError):
    """The MLflow tracking server could not be reached or refused a request; the message
    names the request and what the server said."""


class MlflowNotFound(MlflowError):
    """The server has no such registered model, version or run (HTTP 404)."""


class WebhookRejected(SluiceError):
    """A webhook delivery that is not MLflow's: no or a wrong signature, or too old a
    timestamp (HTTP 401)."""
