"""The SDK production services use: assignments, serve and reward logging.

    from sluice.client import SluiceClient

The names are loaded on first use, so importing `sluice.client` (or its `spill` module)
does not load the Kafka client library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluice.client.sdk import AssignmentRequestError, ParameterValue, Served, SluiceClient, UnknownNameError

__all__ = ["AssignmentRequestError", "ParameterValue", "Served", "SluiceClient", "UnknownNameError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sluice.client import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
