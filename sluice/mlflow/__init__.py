"""Teams that keep their models in MLflow register them in Sluice without moving: the
bridge reads MLflow's Model Registry over its REST API (`sluice models mlflow-sync` polls
it; the control API's `POST /v1/integrations/mlflow/webhook` hears its webhooks) and
registers each new version in Sluice's model registry. Which MLflow field or tag gives
which part of a Sluice version is in `sluice.mlflow.mapping`."""

from sluice.mlflow.bridge import MlflowBridge, SyncReport, kafka_registries
from sluice.mlflow.client import MlflowClient
from sluice.mlflow.exceptions import MlflowError, MlflowNotFound, WebhookRejected
from sluice.mlflow.webhook import MlflowWebhookReceiver

__all__ = ["MlflowBridge", "MlflowClient", "MlflowError", "MlflowNotFound", "MlflowWebhookReceiver", "SyncReport",
           "WebhookRejected", "kafka_registries"]
