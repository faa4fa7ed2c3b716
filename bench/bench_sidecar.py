"""Assignments: the in-process SDK per call (serve logging on) beside the bare core
`Assigner.assign`, twice: the calling thread's CPU time (what a request pays; the
ServeEvent is encoded and produced by the delivery thread), and the whole process's wall
time per serve in a tight loop until Kafka acknowledged every serve (what a saturated
process pays: under the GIL the delivery thread's work is not free). The HTTP sidecar's
requests/s under `wrk` beside a hello-world handler on the same server stack (uvicorn +
httptools + uvloop, raw ASGI) in the same run, and its latency at half that rate. Server
on core 0, `wrk` on core 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path

from bench._figures import Figure
from bench._stack import kafka
from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.client.sdk import SluiceClient
from sluice.config import project_root
from sluice.core.allocation import Allocation
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.local.kafka import free_loopback_ports, stop_pid

SUITE = "sidecar"
HELLO = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"hello":"world"}'})
'''
POST_LUA = '''
wrk.method = "POST"
wrk.body = '{"experiment": "bench", "unit_id": "user-42", "entity": "site-1"}'
wrk.headers["Content-Type"] = "application/json"
{delay}
'''


def _spec():
    from sluice.core.spec import spec_from_mapping

    return spec_from_mapping({
        "id": "bench", "status": "running", "salt": "bench", "unit": "user_id", "entity": "site",
        "parameters": [{"name": "model", "type": "string"}],
        "arms": [{"name": a, "values": {"model": a}} for a in "abcd"], "default_arm": "a",
        "policy": {"name": "thompson"}, "reward": {"type": "binary", "name": "click"},
    })


def _publish(bootstrap: str, prefix: str, serde: SingleObjectSerde) -> None:
    sys.path.insert(0, str(project_root() / "tests"))
    from sidecar_support import publish_table

    spec = _spec()
    ensure_topics(bootstrap, topic_specs(TopicNames(prefix), partitions=3))
    with ExperimentRegistry(bootstrap, prefix, serde) as registry:
        registry.apply(spec)
    publish_table(bootstrap, prefix, serde, spec, "site-1", [1000, 2000, 3000, 4000], version=1)


def _wrk(url: str, seconds: int, delay_ms: float | None = None) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        delay = f"function delay() return {delay_ms} end" if delay_ms else ""
        f.write(POST_LUA.replace("{delay}", delay))
        script = f.name
    try:
        out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", script, url],
                             capture_output=True, text=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(script)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "99")}
    return {"rate": rate, "p50_ms": lat["50"], "p99_ms": lat["99"], "errors": float(non2xx.group(1)) if non2xx else 0.0}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def _serve(args: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["taskset", "-c", "0", *args], env={**os.environ, **env}, cwd=project_root(),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return proc
        except urllib.error.HTTPError:
            return proc  # answering (the hello app answers every path)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server on port {port} did not start; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    stop_pid(proc.pid, timeout_s=20, process=proc)


def _per_call(call, n: int, timer) -> float:
    """Seconds per call of `call` on `timer` (best of 3 runs of n calls)."""
    return min(timeit.repeat(call, number=n, repeat=3, timer=timer)) / n


def _until_delivered(client: SluiceClient, call, n: int) -> float:
    """Wall seconds per call of n calls plus the wait until Kafka acknowledged what they
    logged (best of 3), the garbage collector on as in a service."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            call()
        if not client.delivery.flush(60):
            raise RuntimeError(f"serves not delivered within a minute: {client.delivery.counts}")
        best = min(best, time.perf_counter() - started)
    return best / n


def run(quick: bool) -> list[Figure]:
    seconds = 3 if quick else 10
    serde = SingleObjectSerde(SchemaSet.bundled())
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-sidecar-") as tmp, kafka() as bootstrap:
        tmp_path = Path(tmp)
        prefix = "benchsc"
        _publish(bootstrap, prefix, serde)

        # In process: the SDK with serve logging on, against the bare core assigner.
        client = SluiceClient.connect(bootstrap, prefix=prefix, state_dir=tmp_path / "sdk")
        try:
            n = 20_000 if quick else 100_000
            table = client.tables[b"bench\x1fsite-1"]
            arms, allocation = Allocation.from_arm_weights(table["arms"], table["num_buckets"])
            assigner = _spec().assigner(allocation)
            core = _per_call(lambda: assigner.assign("user-42"), n, time.thread_time)
            caller = _per_call(lambda: client.assign("bench", "user-42", "site-1"), n, time.thread_time)
            unlogged = _until_delivered(client, lambda: client.assign("bench", "user-42", "site-1", log=False), n)
            whole = _until_delivered(client, lambda: client.assign("bench", "user-42", "site-1"), n)
            if client.delivery.counts.dropped or client.delivery.counts.delivered != client.delivery.counts.logged:
                raise RuntimeError(f"serves were lost during the benchmark: {client.delivery.counts}")
        finally:
            client.close()
        figures.append(Figure(SUITE, "SDK assign() with serve logging: caller's thread CPU per call (hash, table, "
                              "serve id, queue)", caller * 1e6, "µs", "lower", "core Assigner.assign", core * 1e6, goal=2.0))
        figures.append(Figure(SUITE, "SDK assign() with serve logging: process wall time per serve, tight loop until "
                              "acknowledged (delivery thread's encoding and producing included)", whole * 1e6, "µs",
                              "lower", "SDK assign(log=False), same loop", unlogged * 1e6))

        # Over HTTP: hello world first, then the sidecar, on the same stack.
        hello_port, sidecar_port = free_loopback_ports(2)
        (tmp_path / "hello_app.py").write_text(HELLO)
        hello = _serve([sys.executable, "-m", "uvicorn", "--app-dir", tmp, "hello_app:app", "--port", str(hello_port),
                        "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"],
                       {}, hello_port, tmp_path / "hello.log")
        try:
            base = _wrk(f"http://127.0.0.1:{hello_port}/v1/assign", seconds)
        finally:
            _stop(hello)
        sidecar = _serve([sys.executable, "-m", "sluice.cli", "sidecar", "--prefix", prefix, "--port", str(sidecar_port),
                          "--state-dir", str(tmp_path / "sidecar")], {"KAFKA_BOOTSTRAP": bootstrap}, sidecar_port,
                         tmp_path / "sidecar.log")
        try:
            full = _wrk(f"http://127.0.0.1:{sidecar_port}/v1/assign", seconds)
            half_rate = full["rate"] / 2
            paced = _wrk(f"http://127.0.0.1:{sidecar_port}/v1/assign", seconds, delay_ms=32 * 1000 / half_rate)
        finally:
            _stop(sidecar)
        if full["errors"] or paced["errors"]:
            raise RuntimeError(f"the sidecar answered non-2xx under load: {full} {paced}")
        figures.append(Figure(SUITE, "sidecar POST /v1/assign requests/s (1 process, wrk -c32)", full["rate"], "req/s",
                              "higher", "hello-world handler, same stack", base["rate"], goal=10_000))
        figures.append(Figure(SUITE, f"sidecar p99 latency at half that rate ({paced['rate']:,.0f} req/s)", paced["p99_ms"],
                              "ms", "lower", "p50", paced["p50_ms"], goal=2.0))
    return figures
