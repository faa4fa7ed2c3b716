"""A Faust agent that does nothing with its events: the ceiling our worker is held against.

Run as `python -m bench._faust_noop BOOTSTRAP TOPICS EXPECT BATCH [SETTINGS_JSON]`. It reads the
comma-separated TOPICS from the beginning with `take_events` (as the worker does) and, once
EXPECT events have arrived, prints one JSON line — count, first and last arrival time — and
exits. SETTINGS_JSON holds extra Faust settings to try.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import time
import uuid

import faust


def main() -> None:
    bootstrap, topics, expect, batch = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
    extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    # Faust makes its data directory, empty with a memory store, in the working directory
    # unless told otherwise: the repository's root filled up with them.
    datadir = tempfile.mkdtemp(prefix="bench-noop-")
    atexit.register(shutil.rmtree, datadir, ignore_errors=True)
    app = faust.App(f"bench-noop-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}", store="memory://",
                    consumer_auto_offset_reset="earliest", web_enabled=False, datadir=datadir, **extra)
    source = app.topic(*topics, key_serializer="raw", value_serializer="raw")
    seen = {"count": 0, "first": 0.0}

    @app.agent(source)
    async def noop(stream: faust.StreamT) -> None:
        async for events in stream.take_events(batch, within=0.2):
            if not seen["count"]:
                seen["first"] = time.time()
                seen["first_batch"] = len(events)
            seen["count"] += len(events)
            if seen["count"] >= expect:
                print(json.dumps({**seen, "last": time.time()}), flush=True)
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


if __name__ == "__main__":
    main()
