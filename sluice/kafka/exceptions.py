"""Errors of the Kafka adapter."""

from sluice.errors import SluiceError


class KafkaAdapterError(SluiceError):
    """A Kafka operation failed; the message names the topic or broker and the cause."""


class TopicConflictError(KafkaAdapterError):
    """A topic exists with settings other than Sluice's definition; nothing was changed."""

    def __init__(self, conflicts: dict[str, list[str]]) -> None:
        self.conflicts = conflicts
        lines = [f"{topic}: {'; '.join(diffs)}" for topic, diffs in sorted(conflicts.items())]
        super().__init__(
            "existing topics differ from Sluice's definitions (not used, not changed):\n  " + "\n  ".join(lines)
        )


class KafkaSecurityError(KafkaAdapterError):
    """The Kafka security settings do not fit together; the message names the variable."""
