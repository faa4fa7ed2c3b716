"""Health guardrails on the real broker: an arm that starts failing for one entity is rolled
back for that entity only, in the publication that finds it, with an Alert and the reason
on its table; it stays out across a worker restart until `sluice experiments reinstate`
gives it back; latency and reward drops act the same way; serves lost for one arm under a
Thompson bandit raise a sample-ratio alert.

Every failure here is far beyond its threshold, so whether it is found is fixed by the
inputs (the chance of missing it is stated per test), and the healthy arms sit far below
theirs (a false alarm needs a tail event of probability below α = 0.01).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.io import read_to_end
from sluice.local.kafka import free_loopback_ports

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stream_support import HOUR_MS, Traffic, WorkerProcess, bandit_spec, latest_tables  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
OFF = {"error_rate": None, "latency": None, "reward_drop": None, "srm": None, "quiet": None}


@pytest.fixture
def health_env(kafka_bootstrap, topic_prefix, serde, tmp_path):
    ensure_topics(kafka_bootstrap, topic_specs(TopicNames(topic_prefix), partitions=4))
    workers: list[WorkerProcess] = []

    class Env:
        bootstrap, prefix = kafka_bootstrap, topic_prefix

        @staticmethod
        def apply(spec: Any) -> None:
            with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as registry:
                registry.apply(spec)

        @staticmethod
        def start(instance: str = "w1") -> WorkerProcess:
            (port,) = free_loopback_ports(1)
            w = WorkerProcess(kafka_bootstrap, topic_prefix, tmp_path / f"{instance}.log", metrics_port=port,
                              extra_args=("--instance-id", f"{topic_prefix}-{instance}", "--decision-interval", "0.5"),
                              env={"SLUICE_TOPIC_PARTITIONS": "4"})
            workers.append(w)
            return w

        @staticmethod
        def alerts() -> list[dict[str, Any]]:
            return [serde.decode(m.value, "Alert").record
                    for m in read_to_end(kafka_bootstrap, [TopicNames(topic_prefix).alerts])]

        @staticmethod
        def table(entity: str) -> dict[str, Any]:
            return latest_tables(kafka_bootstrap, topic_prefix, serde)[("exp", entity)]

        @staticmethod
        def tables() -> list[dict[str, Any]]:
            return [serde.decode(m.value, "WeightTable").record
                    for m in read_to_end(kafka_bootstrap, [TopicNames(topic_prefix).weights])]

    yield Env
    for w in workers:
        w.stop()


def wait_for(what: str, check, timeout_s: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in WorkerProcess.running:
            if worker.proc.poll() is not None and not worker.killed:
                raise AssertionError(f"worker exited with {worker.proc.returncode}; log {worker.log_path}")
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no {what} within {timeout_s} s")


def requests(entities: list[str], n: int, seed: int, *, arms: tuple[str, ...] = ("a", "b", "c"),
             click: dict[str, float] | None = None, error: dict[tuple[str, str], float] | None = None,
             slow: dict[tuple[str, str], bool] | None = None, start_ms: int | None = None) -> Traffic:
    """Serves over the arms at random, each reported with its latency and error as a real
    service would, and clicked at its arm's rate."""
    rng = np.random.default_rng(seed)
    traffic = Traffic()
    start = start_ms if start_ms is not None else int(time.time() * 1000) - HOUR_MS
    for entity in entities:
        for i in range(n):
            arm = arms[int(rng.integers(len(arms)))]
            ts = start + i * 500
            sid = traffic.serve("exp", entity, arm, ts)
            median, sigma = (40.0, 1.225) if (slow or {}).get((entity, arm)) else (40.0, 0.25)
            failed = rng.random() < (error or {}).get((entity, arm), 0.005)
            traffic.outcome("exp", entity, sid, ts + 50, latency_ms=float(median * np.exp(sigma * rng.standard_normal())),
                            error=bool(failed))
            if rng.random() < (click or {}).get(arm, 0.05):
                traffic.reward("exp", entity, sid, 1.0, ts + 1_000)
    return traffic


def weights(table: dict[str, Any]) -> dict[str, float]:
    return {a["arm"]: a["weight"] for a in table["arms"]}


def test_an_arm_failing_for_one_entity_is_rolled_back_there_only_and_stays_out_until_reinstated(
        health_env, serde, tmp_path) -> None:
    """b fails 8 % of requests for site-1 (0.5 % elsewhere, threshold 1 %): ~1,000 reports of
    b at 8 % give ~80 errors where 10 are allowed; missing it has probability below 1e-12."""
    spec = bandit_spec("exp", ["a", "b", "c"], policy="static",
                       health={**OFF, "error_rate": {"threshold": 0.01, "alpha": 0.01, "action": "rollback"}})
    health_env.apply(spec)
    worker = health_env.start()
    requests(["site-1", "site-2"], 3_000, seed=1, error={("site-1", "b"): 0.08}).produce(
        health_env.bootstrap, health_env.prefix, serde)

    alert = wait_for("rollback alert", lambda: next((a for a in health_env.alerts() if a["action"] == "rollback"), None))
    assert (alert["entity"], alert["arm"], alert["kind"], alert["guardrail"]) == ("site-1", "b", "ERROR_RATE", "error_rate")
    assert alert["value"] > 0.05 and alert["threshold"] == 0.01 and "rolled back b" in alert["message"]
    # The very next publication carries it: the first table of site-1 without b follows the alert's version.
    site1 = sorted((t for t in health_env.tables() if t["entity"] == "site-1"), key=lambda t: t["version"])
    first_without_b = next(t for t in site1 if weights(t)["b"] == 0)
    assert first_without_b["version"] == (alert["weights_version"] or 0) + 1  # None: no table was in force yet
    assert "b held at 0 (rollback by error_rate)" in first_without_b["reason"]
    assert weights(health_env.table("site-2"))["b"] > 0.25  # the other entity keeps b
    assert [a["arm"] for a in health_env.alerts()] == ["b"]  # nothing else fired

    # Killed and restarted, the worker keeps b out.
    worker.kill()
    worker = health_env.start()
    version = health_env.table("site-1")["version"]
    requests(["site-1"], 300, seed=2).produce(health_env.bootstrap, health_env.prefix, serde)
    later = wait_for("a newer table", lambda: (t := health_env.table("site-1"))["version"] > version and t)
    assert weights(later)["b"] == 0

    env = {**os.environ, "KAFKA_BOOTSTRAP": health_env.bootstrap}
    run = subprocess.run([sys.executable, "-m", "sluice.cli", "experiments", "reinstate", "exp", "b", "--entity", "site-1",
                          "--prefix", health_env.prefix], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert run.returncode == 0 and "b reinstated for entity 'site-1'" in run.stdout, run.stderr
    back = wait_for("b's weight back", lambda: (t := health_env.table("site-1")) and weights(t)["b"] > 0 and t)
    assert "held at 0" not in back["reason"]
    assert any(a["action"] == "reinstate" and a["arm"] == "b" for a in health_env.alerts())


def test_a_slow_arm_is_rolled_back(health_env, serde) -> None:
    """c's latency has median 40 ms and p95 300 ms (18 % of requests over 120 ms, against 5 %
    allowed); the others' p95 is 60 ms. ~1,000 reports of c: missing it has probability < 1e-12."""
    spec = bandit_spec("exp", ["a", "b", "c"], policy="static",
                       health={**OFF, "latency": {"threshold": 120, "quantile": 0.95, "alpha": 0.01, "action": "rollback"}})
    health_env.apply(spec)
    health_env.start()
    requests(["site-1"], 3_000, seed=3, slow={("site-1", "c"): True}).produce(health_env.bootstrap, health_env.prefix,
                                                                            serde)
    alert = wait_for("latency rollback", lambda: next((a for a in health_env.alerts() if a["action"] == "rollback"), None))
    assert (alert["arm"], alert["guardrail"]) == ("c", "latency") and alert["value"] > 120
    assert weights(health_env.table("site-1"))["c"] == 0


def test_a_reward_drop_against_control_is_rolled_back(health_env, serde) -> None:
    """A/B/C with control a at 10 % clicks, b at 4 % (60 % below, threshold 5 %), c at 10 %:
    3,000 serves an arm put b's drop at over 8 standard errors."""
    spec = bandit_spec("exp", ["a", "b", "c"], policy="static",
                       health={**OFF, "reward_drop": {"threshold": 0.05, "alpha": 0.01, "action": "rollback"}})
    health_env.apply(spec)
    health_env.start()
    requests(["site-1"], 9_000, seed=4, click={"a": 0.10, "b": 0.04, "c": 0.10}).produce(
        health_env.bootstrap, health_env.prefix, serde)
    alert = wait_for("reward-drop rollback", lambda: next((a for a in health_env.alerts() if a["action"] == "rollback"), None))
    assert (alert["arm"], alert["guardrail"], alert["kind"]) == ("b", "reward_drop", "REWARD_DROP")
    assert weights(health_env.table("site-1"))["b"] == 0
    assert {a["arm"] for a in health_env.alerts()} == {"b"}


def test_serves_lost_for_one_arm_under_a_thompson_bandit_raise_a_sample_ratio_alert(health_env, serde,
                                                                                   tmp_path) -> None:
    """The SDK assigns 1,000,000 units of one entity to two arms of a Thompson bandit whose
    weights keep moving (capped at 60 %, as a cautious rollout would); 2 % of b's serves are
    never logged. Each serve adds about 4e-5 nats of evidence (the KL divergence of the loss
    at shares between 40 and 60 %): over 20 seeds of this run simulated offline the e-process
    ended between 22 and 57 nats (mean 42, sd 9), against the 7.6 the detector needs at
    α = 0.001, so never crossing is a 3.5-sigma event (probability below 3e-4)."""
    from sluice.client import SluiceClient

    spec = bandit_spec("exp", ["a", "b"], health={**OFF, "srm": {"alpha": 0.001, "action": "alert"}},
                       guardrails={"floor": 0.02, "cap": 0.6})
    health_env.apply(spec)
    worker = health_env.start()
    client = SluiceClient.connect(health_env.bootstrap, prefix=health_env.prefix, state_dir=tmp_path / "sdk")
    rng = np.random.default_rng(6)
    try:
        for chunk in range(10):
            for i in range(chunk * 100_000, (chunk + 1) * 100_000):
                served = client.assign("exp", f"u{i}", entity="site-1", log=False)
                if served.arm == "b" and rng.random() < 0.02:
                    continue  # logged by nobody: the sample ratio breaks
                client.log_exposure(served)
                if rng.random() < 0.05:  # both arms click alike: the bandit stays near an even split
                    client.log_reward(served, 1.0)
            assert client.delivery.flush(60)
            # Let the worker catch up, so that serves meet the weight tables they were served under.
            worker.wait_metric("sluice_stream_consumer_lag_messages", 0, topic="serves")
    finally:
        client.close()
    alert = wait_for("sample ratio alert", lambda: next((a for a in health_env.alerts() if a["guardrail"] == "srm"), None))
    assert (alert["kind"], alert["arm"], alert["action"]) == ("SRM", "b", "alert") and alert["value"] < 1.0
    assert worker.metric("sluice_srm_p_value", experiment="exp", entity="site-1") < 0.001


def test_a_verdict_that_acts_retires_a_losing_arm_for_good(health_env, serde) -> None:
    """decisions: act. Under Thompson sampling c clicks at 2 % against a and b at 10 %: with
    ~1,000 serves an arm its P(best) is below 1e-6 (the STOP threshold is 0.01), so the
    verdict retires it; a restarted worker keeps it out."""
    spec = bandit_spec("exp", ["a", "b", "c"], health=OFF, decisions="act",
                       criteria={"min_window_days": 0.01, "min_events_per_arm": 200})
    health_env.apply(spec)
    worker = health_env.start("w1")
    requests(["site-1"], 3_000, seed=7, click={"a": 0.10, "b": 0.10, "c": 0.02},
             start_ms=int(time.time() * 1000) - 2 * HOUR_MS).produce(health_env.bootstrap, health_env.prefix, serde)
    decision = wait_for("a decision that retires c", lambda: next(
        (d for d in (serde.decode(m.value, "Decision").record
                     for m in read_to_end(health_env.bootstrap, [TopicNames(health_env.prefix).decisions]))
         if d["changes"] and "retired c" in d["changes"]), None))
    assert decision["entity"] == "site-1" and decision["verdict"] == "CONTINUE"
    table = wait_for("c at 0", lambda: (t := health_env.table("site-1")) and weights(t)["c"] == 0 and t)
    assert "c held at 0 (kill by decision)" in table["reason"]
    worker.kill()
    health_env.start("w1")
    version = table["version"]
    requests(["site-1"], 300, seed=8, start_ms=int(time.time() * 1000) - HOUR_MS).produce(
        health_env.bootstrap, health_env.prefix, serde)
    later = wait_for("a newer table", lambda: (t := health_env.table("site-1"))["version"] > version and t)
    assert weights(later)["c"] == 0


def test_an_arm_retired_by_hand_is_held_at_zero_for_its_entity_until_reinstated(health_env, serde) -> None:
    """`sluice experiments retire` (the API's retire publishes the same spec change): the worker
    holds b at 0 for site-1 only, says so on the table and in an Alert, and gives it back
    when it is reinstated."""
    health_env.apply(bandit_spec("exp", ["a", "b", "c"], policy="static", health=OFF))
    health_env.start()
    requests(["site-1", "site-2"], 300, seed=11).produce(health_env.bootstrap, health_env.prefix, serde)
    wait_for("tables of both entities", lambda: {("exp", "site-1"), ("exp", "site-2")}
             <= set(latest_tables(health_env.bootstrap, health_env.prefix, serde)))
    env = {**os.environ, "KAFKA_BOOTSTRAP": health_env.bootstrap}
    run = subprocess.run([sys.executable, "-m", "sluice.cli", "experiments", "retire", "exp", "b", "--entity", "site-1",
                          "--prefix", health_env.prefix], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert run.returncode == 0 and "b retired for entity 'site-1'" in run.stdout, run.stderr
    held = wait_for("b at 0 for site-1", lambda: (t := health_env.table("site-1")) and weights(t)["b"] == 0 and t)
    assert "b held at 0 (retire by operator)" in held["reason"]
    assert weights(health_env.table("site-2"))["b"] > 0.25
    alert = next(a for a in health_env.alerts() if a["action"] == "retire")
    assert (alert["entity"], alert["arm"], alert["guardrail"]) == ("site-1", "b", "operator")
    refused = subprocess.run([sys.executable, "-m", "sluice.cli", "experiments", "retire", "exp", "a",
                              "--prefix", health_env.prefix], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert refused.returncode == 1 and "default arm 'a' cannot be retired" in refused.stderr
    with ExperimentRegistry(health_env.bootstrap, health_env.prefix, serde) as registry:
        registry.reinstate("exp", "b", "site-1")
    wait_for("b back for site-1", lambda: (t := health_env.table("site-1")) and weights(t)["b"] > 0 and t)
