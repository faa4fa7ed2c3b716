"""MLflow's Model Registry webhooks (MLflow 3.3+): checking a delivery is MLflow's, and
turning its event into a sync of the model it is about.

MLflow signs each delivery as Standard Webhooks do: header `X-MLflow-Signature` is
`v1,<base64 HMAC-SHA256>` of `<X-MLflow-Delivery-Id>.<X-MLflow-Timestamp>.<body>` with the
webhook's secret; `X-MLflow-Timestamp` is in Unix seconds. The body is
`{"entity": "model_version", "action": "created", "timestamp": …, "data": {"name": …,
"version": …, …}}`. The payload is not trusted beyond naming the model: the bridge reads
the model and its versions from the server, so a late, repeated or out-of-order delivery
registers nothing twice and never an older state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sluice.mlflow.bridge import MlflowBridge
from sluice.mlflow.exceptions import WebhookRejected

SIGNATURE_HEADER = "x-mlflow-signature"
DELIVERY_ID_HEADER = "x-mlflow-delivery-id"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
# A delivery older or newer than this is refused: a captured one cannot be replayed later.
TOLERANCE_S = 300
# The events that can change what Sluice registers: a new version, its tags, its aliases.
FOLLOWED = {("model_version", "created"), ("model_version_tag", "set"), ("model_version_tag", "deleted"),
            ("model_version_alias", "created"), ("model_version_alias", "deleted")}


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, now_s: float,
                     tolerance_s: float = TOLERANCE_S) -> str:
    """Check a delivery is signed with `secret` and recent; its delivery id. `headers` have
    lower-case names. Raises `WebhookRejected` naming what is wrong."""
    delivery_id, timestamp = headers.get(DELIVERY_ID_HEADER, ""), headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    for name, value in ((SIGNATURE_HEADER, given), (DELIVERY_ID_HEADER, delivery_id), (TIMESTAMP_HEADER, timestamp)):
        if not value:
            raise WebhookRejected(f"header {name} is required (set the webhook's secret in MLflow)")
    if not timestamp.isdigit():
        raise WebhookRejected(f"header {TIMESTAMP_HEADER} must be Unix seconds, not {timestamp!r}")
    if abs(now_s - int(timestamp)) > tolerance_s:
        raise WebhookRejected(f"header {TIMESTAMP_HEADER} is {timestamp}, more than {tolerance_s:g} s from now "
                              f"({int(now_s)}): a stale or replayed delivery")
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    # Several signatures may be given, space-separated, while a secret is rotated.
    for candidate in given.split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return delivery_id
    raise WebhookRejected(f"header {SIGNATURE_HEADER} does not match the body signed with "
                          "SLUICE_MLFLOW_WEBHOOK_SECRET")


@dataclass(frozen=True)
class WebhookEvent:
    """What a delivery announces: `entity.action` about registered model `model`."""

    entity: str
    action: str
    model: str | None

    @property
    def name(self) -> str:
        return f"{self.entity}.{self.action}"

    @property
    def followed(self) -> bool:
        return (self.entity, self.action) in FOLLOWED and bool(self.model)


def parse_event(body: Mapping[str, Any]) -> WebhookEvent:
    """The event of a verified delivery's JSON body."""
    data = body.get("data")
    model = data.get("name") if isinstance(data, dict) else None
    return WebhookEvent(str(body.get("entity", "")), str(body.get("action", "")),
                        model if isinstance(model, str) else None)


class MlflowWebhookReceiver:
    """Verifies a delivery, then syncs the model it names through `bridge` (the same
    registration as `sluice models mlflow-sync`)."""

    def __init__(self, secret: str, bridge: MlflowBridge, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("the webhook secret must not be empty")
        self._secret = secret
        self.bridge = bridge
        self._clock = clock

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """The delivery id of a genuine delivery; else `WebhookRejected`."""
        return verify_signature(self._secret, headers, body, self._clock())

    def handle(self, delivery_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Sync what a verified delivery is about; the answer to send back (what was
        registered, or that the event is not one Sluice follows)."""
        event = parse_event(body)
        if not event.followed:
            return {"delivery_id": delivery_id, "event": event.name, "followed": False}
        report = self.bridge.sync([event.model] if event.model else [])
        return {"delivery_id": delivery_id, "event": event.name, "followed": True, **report.public()}
