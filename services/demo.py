"""The platform demo behind `make demo`: two weeks of simulated traffic through the whole
stack in a few minutes.

Starts (or reuses) the local broker, creates a fresh set of topics for this run, applies
the demo experiments (a Thompson-sampling bandit over four ranking models for three
advertisers, a static A/B test beside it, and three sites whose own click models are
retrained), starts a stream worker, the control API (its web console, and the ClickHouse
sink inside it, the embedded engine being one process's) and the sidecar as child
processes, prints the console's address with a read token, and runs the traffic simulator
against the live weights, showing progress and the weights per entity. The best model of
one advertiser changes half-way, and a few malformed events go in. The sites' model
lifecycle (scheduler, trainer, lifecycle follower) runs on the simulated clock
(`services.demo_lifecycle`). At the end it prints a summary — chosen model per entity
against the truth, regret against an equal split, training jobs and model versions, events
produced against rows in ClickHouse, dead letters by reason — writes the HTML report, and
stops every process it started, also on Ctrl-C (with `keep`, after the summary, the console
and the broker stay up until Ctrl-C).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.config import Settings, project_root
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.dlq import read_headers
from sluice.kafka.io import AvroProducer, read_to_end
from sluice.kafka.security import KafkaSecurity
from sluice.local.kafka import free_loopback_ports, stop_pid
from sluice.local.stack import start_kafka, stop_kafka
from services.assignments import SidecarAssignments
from services.demo_lifecycle import LifecycleDemo
from sluice.core.spec import spec_from_record
from sluice.kafka.follower import CompactedTopicFollower
from services.simulator import DAY_MS, Scenario, Simulator, Tally, describe, load_specs

DEMO_DIR = project_root() / "examples" / "demo"


@dataclass
class DemoOptions:
    specs: list[Path]
    scenario: Path
    wall_seconds: float = 150.0  # the simulated span takes this long
    days: float | None = None  # override the scenario's simulated days (the test runs a short one)
    summary_json: Path | None = None  # also write the summary here
    keep: bool = False  # after the summary, keep the console and the broker up until Ctrl-C


class Child:
    """A `sluice` subcommand as a child process, logging to a file, stopped by pid."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", *args], env={**os.environ, **env},
                                     cwd=project_root(), stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout_s: float) -> bool:
        try:
            self.proc.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        stop_pid(self.proc.pid, timeout_s=30, process=self.proc)
        self._log.close()


def _metric(port: int, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _weights_table(tables: dict[bytes, dict[str, Any]], specs: dict[str, Any]) -> Table:
    table = Table(title="live weights (latest table per experiment and entity)", expand=False)
    table.add_column("experiment / entity")
    table.add_column("version", justify="right")
    table.add_column("weights")
    for key in sorted(tables):
        t = tables[key]
        weights = "  ".join(f"{a['arm']} {a['weight']:.2f}" for a in t["arms"] if a["arm"] in specs[t["experiment_id"]].arm_names)
        table.add_row(f"{t['experiment_id']} / {t['entity']}", str(t["version"]), weights)
    return table


def run(settings: Settings, options: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary (also printed). Stops what it started."""
    console = console or Console()
    serde = SingleObjectSerde(SchemaSet.bundled())
    specs = load_specs(options.specs)
    scenario = Scenario.load(options.scenario, specs)
    if options.days is not None:
        scenario = Scenario(**{**scenario.__dict__, "days": options.days})
    home = settings.sluice_home / "demo"
    shutil.rmtree(home, ignore_errors=True)  # each run starts from empty tables
    home.mkdir(parents=True)
    names = TopicNames(f"demo-{uuid.uuid4().hex[:8]}")
    children: list[Child] = []
    status = start_kafka(settings)
    try:
        bootstrap, security = status.bootstrap, status.security
        where = f"started in {status.ready_after_s:.1f} s" if status.started_broker else "already running"
        console.print(f"Kafka at {bootstrap} ({where}); topics {names.prefix}.*; ClickHouse (embedded) in {home}")
        ensure_topics(bootstrap, topic_specs(names, partitions=settings.sluice_topic_partitions), security=security,
                      replication_factor=settings.sluice_replication_factor)
        with ExperimentRegistry(bootstrap, names.prefix, serde, security=security) as registry:
            for spec in specs.values():
                registry.apply(spec)
        start_ms = int(time.time() * 1000) - round(scenario.days * DAY_MS)
        lifecycle = _lifecycle(bootstrap, security, names, serde, specs, scenario, home)
        if lifecycle is not None:
            for line in lifecycle.seed(start_ms, scenario.serves_per_entity_hour * 24):
                console.print(f"day  0.0  lifecycle: {line}")
        metrics_port, sidecar_port, api_port = free_loopback_ports(3)
        env = {"KAFKA_BOOTSTRAP": bootstrap, "SLUICE_HOME": str(home)}
        worker = Child("worker", ["worker", "--prefix", names.prefix, "--publish-interval", "0.25",
                                  "--decision-interval", "2", "--metrics-port", str(metrics_port),
                                  "--instance-id", f"{names.prefix}-w1"], env, home)
        # The API serves the console and, on the embedded engine, runs the ClickHouse sink.
        api = Child("api", ["api", "--prefix", names.prefix, "--port", str(api_port), "--database", "sluice",
                            "--instance-id", f"{names.prefix}-a1"], env, home)
        sidecar = Child("sidecar", ["sidecar", "--prefix", names.prefix, "--port", str(sidecar_port),
                                    "--state-dir", str(home / "sidecar")], env, home)
        children += [worker, api, sidecar]
        _record(children, home)

        producer = AvroProducer(bootstrap, serde, security=security, **{"linger.ms": 20})
        tables = CompactedTopicFollower(bootstrap, names.weights, lambda v: serde.decode(v, "WeightTable").record,
                                        security=security).start()
        live_specs = CompactedTopicFollower(bootstrap, names.experiments, lambda v: spec_from_record(
            serde.decode(v, "ExperimentSpec").record), security=security).start()
        _wait_http(f"http://127.0.0.1:{sidecar_port}/readyz", sidecar)
        _wait_http(f"http://127.0.0.1:{api_port}/healthz", api)
        console.print(_console_line(bootstrap, security, names, serde, api_port), soft_wrap=True)  # the token on one line
        assignments = SidecarAssignments(f"http://127.0.0.1:{sidecar_port}")
        simulator = Simulator(specs, scenario, assignments, producer, names,
                              data_end=lifecycle.data_end if lifecycle is not None else None)
        if lifecycle is not None:
            lifecycle.start(clock=lambda: simulator.now_ms)
        progress = Progress(TextColumn("simulating {task.fields[day]}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                            TextColumn("{task.fields[serves]:,} serves"), TimeElapsedColumn())
        task = progress.add_task("sim", total=1.0, day="day 0", serves=0)

        def view() -> Group:
            return Group(progress, _weights_table(dict(tables.latest), specs))

        with Live(view(), console=console, refresh_per_second=4, transient=False) as live:
            def on_step(fraction: float, tally: Tally) -> None:
                progress.update(task, completed=fraction, day=f"day {fraction * scenario.days:4.1f}/{scenario.days:g}",
                                serves=sum(tally.serves.values()))
                simulator.specs.update({spec.id: spec for spec in live_specs.latest.values() if spec.id in specs})
                for line in lifecycle.lines() if lifecycle is not None else []:
                    console.print(line)
                live.update(view())
                for child in children:
                    if not child.alive():
                        raise RuntimeError(f"the {child.name} stopped (exit {child.proc.returncode}); see {child.log_path}")

            tally = simulator.run(start_ms, wall_seconds=options.wall_seconds, on_step=on_step)
            if lifecycle is not None:
                lifecycle.stop()
                for line in lifecycle.lines():
                    console.print(line)
            producer.flush()
            assignments.close()
            sidecar.stop()  # delivers the serves it logged before it exits
            _drain(worker, metrics_port, console)
            live.update(view())
        tables.stop()
        live_specs.stop()
        producer.close()  # its Kafka client goes before the broker may stop
        worker.stop()
        console.print("waiting for the sink to land the last rows ...")
        if not _caught_up(bootstrap, security, f"{names.prefix}-clickhouse-sink", [names.serves, names.rewards], 120):
            raise RuntimeError(f"the sink did not catch up within 120 s; see {api.log_path}")
        api.stop()  # the embedded engine is one process's: the summary reads it next
        summary = _summary(bootstrap, security, names, home, tally, scenario, specs, serde, start_ms)
        if lifecycle is not None:
            summary["lifecycle"] = lifecycle.summary()
        _print_summary(console, summary)
        summary["offline"] = _offline_evaluation(home, specs, console)
        if options.summary_json is not None:
            options.summary_json.write_text(json.dumps(summary, indent=2))
        report = _report(home, "demo-ranking" if "demo-ranking" in scenario.rates else next(iter(scenario.rates)), console)
        if report is not None:
            summary["report"] = str(report)
            console.print(f"[bold]report:[/] {report}")
        if options.keep:
            api = Child("api", ["api", "--prefix", names.prefix, "--port", str(api_port), "--database", "sluice",
                                "--instance-id", f"{names.prefix}-a1"], env, home)
            children.append(api)
            _record(children, home)
            _wait_http(f"http://127.0.0.1:{api_port}/healthz", api)
            console.print(f"[bold]kept running:[/] the console at http://127.0.0.1:{api_port}/console/ and Kafka at "
                          f"{bootstrap}; Ctrl-C stops them", soft_wrap=True)
            while api.alive():
                time.sleep(0.5)
        return summary
    finally:
        for child in children:
            child.stop()
        if status.started_broker:
            stop_kafka(settings)
            console.print("stopped the Kafka broker this demo started")


def _record(children: list[Child], home: Path) -> None:
    """The pids of the children, for whoever must check that they stopped."""
    (home / "children.pids").write_text("".join(f"{c.name} {c.proc.pid}\n" for c in children))


def _lifecycle(bootstrap: str, security: KafkaSecurity, names: TopicNames, serde: SingleObjectSerde,
               specs: dict[str, Any], scenario: Scenario, home: Path) -> LifecycleDemo | None:
    """The model lifecycle, when the scenario has true rates for the model versions of an
    experiment that takes the demo's model type (its training policies are the demo's,
    examples/demo/training.yaml)."""
    from services.demo_lifecycle import MODEL_TYPE

    taken = [specs[exp] for exp in scenario.models
             if specs[exp].models is not None and MODEL_TYPE in (specs[exp].models.model_types or (MODEL_TYPE,))]
    if not taken:
        return None
    return LifecycleDemo(bootstrap, security, names.prefix, serde, taken[0], DEMO_DIR / "training.yaml", home / "models")


def _console_line(bootstrap: str, security: KafkaSecurity, names: TopicNames, serde: SingleObjectSerde,
                  port: int) -> str:
    """Where the web console is, with a read token made for this demo."""
    from sluice.tokens import TokenRegistry

    with TokenRegistry(bootstrap, names.prefix, serde, security=security) as tokens:
        _, secret = tokens.create("demo-viewer", "read")
    return (f"[bold]console:[/] http://127.0.0.1:{port}/console/  read token: {secret}\n"
            f"  (a token that may pause and resume: sluice tokens create --prefix {names.prefix} --name you --scope write)")


def _wait_http(url: str, child: Child, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"the {child.name} stopped (exit {child.proc.returncode}); see {child.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s; see {child.log_path}")


def _drain(worker: Child, port: int, console: Console, timeout_s: float = 120.0) -> None:
    """Until the worker has read everything (consumer lag 0 twice in a row)."""
    deadline = time.monotonic() + timeout_s
    zero = 0
    while time.monotonic() < deadline and zero < 2:
        lag = _metric(port, "sluice_stream_consumer_lag_messages")
        zero = zero + 1 if lag == 0 else 0
        time.sleep(0.5)
    if zero < 2:
        console.print(f"[yellow]the worker still had input to read after {timeout_s:.0f} s; see {worker.log_path}[/]")


def _caught_up(bootstrap: str, security: KafkaSecurity, group: str, topics: list[str], timeout_s: float) -> bool:
    """True once `group` has committed the end offset of every partition of `topics`."""
    from confluent_kafka import Consumer, TopicPartition

    from sluice.kafka.clients import consumer_config
    from sluice.kafka.io import watermarks

    consumer = Consumer(consumer_config(bootstrap, group, security))  # never subscribes: reads the group's offsets only
    try:
        meta = consumer.list_topics(timeout=10)
        tps = [TopicPartition(t, p) for t in topics for p in meta.topics[t].partitions]
        ends = {(tp.topic, tp.partition): watermarks(consumer, tp)[1] for tp in tps}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = consumer.committed(tps, timeout=10)
            if all(max(tp.offset, 0) >= ends[(tp.topic, tp.partition)] for tp in committed):
                return True
            time.sleep(0.5)
        return False
    finally:
        consumer.close()


def _summary(bootstrap: str, security: KafkaSecurity, names: TopicNames, home: Path, tally: Tally, scenario: Scenario,
             specs: dict[str, Any], serde: Any, start_ms: int) -> dict[str, Any]:
    from sluice.clickhouse import connect

    client = connect(path=home / "clickhouse")
    try:
        counts = {}
        for table in ("serves", "rewards"):
            row = client.query(f"SELECT count(), uniqExact(event_id) FROM sluice.{table}").result_rows[0]
            counts[table] = {"rows": int(row[0]), "distinct_event_ids": int(row[1])}
    finally:
        client.close()
    letters: Counter[str] = Counter()
    for m in read_to_end(bootstrap, [names.dlq], security=security):
        h = read_headers(m.headers)
        letters[f"{h.get('sluice.rejected.by', '?')}: {h.get('sluice.reason', '?').split(':')[0]}"] += 1
    tables, ends = {}, {}
    for m in read_to_end(bootstrap, [names.weights], security=security):
        rec = serde.decode(m.value, "WeightTable").record
        tables[(rec["experiment_id"], rec["entity"])] = rec
        ends[(rec["experiment_id"], rec["entity"], rec["version"])] = rec["window_end"]
    verdicts = {}
    for m in read_to_end(bootstrap, [names.decisions], security=security):
        d = serde.decode(m.value, "Decision").record
        verdicts[f"{d['experiment_id']}/{d['entity']}"] = {k: d[k] for k in ("verdict", "rule", "winner", "reason", "changes")}
    alerts = []
    for m in read_to_end(bootstrap, [names.alerts], security=security):
        a = serde.decode(m.value, "Alert").record
        # The simulated time of an alert: the newest event time of the table it came with.
        end = ends.get((a["experiment_id"], a["entity"] or "", (a["weights_version"] or 0) + 1))
        alerts.append({"day": None if end is None else round((end - start_ms) / DAY_MS, 2),
                       **{k: a[k] for k in ("experiment_id", "entity", "arm", "guardrail", "action", "value",
                                            "threshold", "message")}})
    produced = {
        "serves": sum(tally.serves.values()) + tally.malformed["unknown_arm"],
        "rewards": sum(tally.rewards.values()) + sum(tally.outcomes.values()) + tally.malformed["invalid_value"],
    }
    return {
        "chosen": describe(tally, scenario, specs),
        "final_weights": {f"{e}/{n}": {a["arm"]: a["weight"] for a in t["arms"]} for (e, n), t in sorted(tables.items())},
        "regret": {exp: {"policy": tally.regret[exp], "equal_split": tally.regret_equal_split[exp]} for exp in tally.regret},
        "produced": produced,
        "clickhouse": counts,
        "dead_letters": dict(letters),
        "malformed_sent": dict(tally.malformed),
        "verdicts": verdicts,
        "alerts": alerts,
        "rollbacks": [a for a in alerts if a["action"] in ("rollback", "pause")],
    }


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    t = Table(title="chosen model per entity (most served over the last simulated day) vs the truth")
    for col in ("experiment / entity", "chosen", "share", "truly best", "right?"):
        t.add_column(col)
    for key, row in s["chosen"].items():
        right = "n/a" if row["static"] else "yes" if row["chosen"] == row["best"] else "no"
        t.add_row(key, row["chosen"], "" if row["static"] else f"{row['share']:.0%}", row["best"], right)
    console.print(t)
    r = Table(title="expected regret (clicks lost against always serving the best arm)")
    for col in ("experiment", "this policy", "equal-split A/B", "saved"):
        r.add_column(col, justify="right")
    for exp, row in s["regret"].items():
        saved = 1 - row["policy"] / row["equal_split"] if row["equal_split"] else 0.0
        r.add_row(exp, f"{row['policy']:.1f}", f"{row['equal_split']:.1f}", f"{saved:.0%}")
    console.print(r)
    e = Table(title="events produced vs rows in ClickHouse")
    for col in ("table", "produced", "rows", "distinct event ids", "match"):
        e.add_column(col, justify="right")
    for table in ("serves", "rewards"):
        c = s["clickhouse"][table]
        ok = s["produced"][table] == c["rows"] == c["distinct_event_ids"]
        e.add_row(table, f"{s['produced'][table]:,}", f"{c['rows']:,}", f"{c['distinct_event_ids']:,}", "yes" if ok else "NO")
    console.print(e)
    v = Table(title="verdict per entity (the decision engine's latest)")
    for col in ("experiment / entity", "verdict", "rule", "winner"):
        v.add_column(col)
    for key, row in sorted(s["verdicts"].items()):
        v.add_row(key, row["verdict"], row["rule"], row["winner"] or "")
    console.print(v)
    h = Table(title="health alerts (simulated day, what fired, what was done)")
    for col in ("day", "experiment / entity", "arm", "guardrail", "action", "observed", "threshold"):
        h.add_column(col)
    for a in s["alerts"]:
        h.add_row("" if a["day"] is None else f"{a['day']:.1f}", f"{a['experiment_id']}/{a['entity']}", a["arm"] or "",
                  a["guardrail"] or "", a["action"] or "", f"{a['value']:.4g}", f"{a['threshold']:.4g}")
    console.print(h)
    if "lifecycle" in s:
        _print_lifecycle(console, s["lifecycle"])
    d = Table(title="dead letters by who rejected them and why")
    d.add_column("rejected by: reason")
    d.add_column("count", justify="right")
    for reason, n in sorted(s["dead_letters"].items()):
        d.add_row(reason, str(n))
    console.print(d)


def _print_lifecycle(console: Console, life: dict[str, Any]) -> None:
    results = {r["job_id"]: r for r in life["results"] if r["status"] == "SUCCEEDED"}
    j = Table(title="training jobs the scheduler sent (simulated day) and what the trainer made of them")
    for col in ("day", "job", "sites (one grouped job)", "why", "datasets built once", "training", "versions"):
        j.add_column(col)
    for job in life["jobs"]:
        r = results.get(job["job_id"])
        j.add_row(f"{job['day']:.1f}", job["job_id"][:8], ", ".join(job["members"]), ", ".join(job["reasons"]),
                  f"{r['transform_ms']} ms" if r else "", f"{r['train_ms']} ms" if r else "",
                  ", ".join(r["versions"]) if r else "not trained")
    console.print(j)
    v = Table(title="model versions per site (the registry at the end; days are simulated)")
    for col in ("site", "arm", "status", "trained", "data ends", "rows", "held-out AUC", "why"):
        v.add_column(col)
    for row in life["versions"]:
        auc = "" if row["auc"] is None else f"{row['auc']:.3f}"
        v.add_row(row["entity"], row["arm"], row["status"], f"{row['trained_day']:.1f}", f"{row['data_end_day']:.1f}",
                  f"{row['rows']:,}", auc, row["reason"])
    console.print(v)


def _offline_evaluation(home: Path, specs: dict[str, Any], console: Console) -> list[dict[str, Any]]:
    """The continuous offline evaluation, run once on the demo's logs (the sink would run it
    daily): per entity, what an equal split, each arm alone and the live policy would have
    earned on the last 7 days of traffic. Printed per entity; the report shows it too."""
    from sluice.analytics.offline import latest_evaluations, run_continuous
    from sluice.clickhouse import connect

    console.print("offline evaluation of the candidate policies on the logged propensities ...")
    client = connect(path=home / "clickhouse")
    try:
        run_continuous(client, "sluice", now_ms=int(time.time() * 1000))
        rows = [r | {"experiment_id": exp} for exp in specs for r in latest_evaluations(client, exp, "sluice")]
    finally:
        client.close()
    for (exp, entity) in sorted({(r["experiment_id"], r["entity"]) for r in rows}):
        reward = specs[exp].reward.name
        t = Table(title=f"offline evaluation, {exp}/{entity}: estimated {reward}s per serve over the last window")
        t.add_column("target policy", no_wrap=True)
        for col in ("IPS", "SNIPS", "DR", "DR 95 %", "effective n"):
            t.add_column(col, justify="right", no_wrap=True)
        mine = [r for r in rows if (r["experiment_id"], r["entity"]) == (exp, entity)]
        for target in dict.fromkeys(r["target"] for r in mine):
            by = {r["estimator"]: r for r in mine if r["target"] == target}
            dr, snips = by.get("dr"), by.get("snips")
            t.add_row(target, f"{by['ips']['estimate']:.4f}" if "ips" in by else "",
                      f"{snips['estimate']:.4f}" if snips else "", f"{dr['estimate']:.4f}" if dr else "",
                      f"{dr['lower']:.3f}–{dr['upper']:.3f}" if dr else "",
                      f"{snips['effective_sample_size']:,.0f}" if snips else "")
        console.print(t)
    return rows


def _report(home: Path, experiment: str, console: Console) -> Path | None:
    """The HTML report of `experiment`, if the report module is available."""
    try:
        from sluice.analytics.report import write_report  # type: ignore[import-not-found]
    except ImportError:
        console.print("[yellow]no report: sluice.analytics.report is not built yet[/]")
        return None
    from sluice.clickhouse import connect

    client = connect(path=home / "clickhouse")
    try:
        out = home / f"report-{experiment}.html"
        return Path(write_report(client, experiment, out, database="sluice"))
    finally:
        client.close()


def default_options(wall_seconds: float = 150.0, days: float | None = None,
                    summary_json: Path | None = None, scenario: Path | None = None) -> DemoOptions:
    return DemoOptions(specs=[DEMO_DIR / "ranking.yaml", DEMO_DIR / "checkout_ab.yaml", DEMO_DIR / "models.yaml"],
                       scenario=scenario or DEMO_DIR / "scenario.yaml", wall_seconds=wall_seconds, days=days,
                       summary_json=summary_json)
