"""`sluice evaluate` and `sluice replay` on log files, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sluice.cli import main

RATES = np.array([0.02, 0.05, 0.10])
PROPENSITY = np.array([0.6, 0.3, 0.1])


@pytest.fixture
def log_table() -> pa.Table:
    """A non-uniform log of 6,000 rounds over three items, clicked at 2, 5 and 10 %."""
    rng = np.random.default_rng(1)
    n = 6_000
    idx = rng.choice(3, n, p=PROPENSITY)
    return pa.table({"item_id": np.array(["a", "b", "c"])[idx], "click": (rng.random(n) < RATES[idx]).astype(int),
                     "propensity_score": PROPENSITY[idx], "slot": np.where(idx == 0, 10, 20), "ts": np.arange(n),
                     "age": rng.normal(size=n)})


def run(*args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


MAPPING = ("--column", "action=item_id", "--column", "reward=click", "--column", "pscore=propensity_score",
           "--column", "timestamp=ts")


def test_evaluate_a_parquet_log_with_mapped_columns(tmp_path: Path, log_table: pa.Table) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(log_table, path)
    out = run("evaluate", "--file", str(path), *MAPPING, "--bootstrap", "200", "--target", "always:c",
              "--target", "equal", "--estimator", "snips", "--estimator", "dr", "--context", "age")
    assert out["arms"] == ["a", "b", "c"] and out["rounds"] == 6_000
    by = {(r["target"], r["estimator"]): r for r in out["estimates"]}
    assert set(by) == {("always:c", "snips"), ("always:c", "dr"), ("equal", "snips"), ("equal", "dr")}
    for est in ("snips", "dr"):  # the truths (10 % and the mean of the rates) in the intervals
        assert by[("always:c", est)]["lower"] <= 0.10 <= by[("always:c", est)]["upper"]
        assert by[("equal", est)]["lower"] <= RATES.mean() <= by[("equal", est)]["upper"]
    assert by[("always:c", "snips")]["max_weight"] == pytest.approx(10.0)


def test_evaluate_a_csv_log_with_integer_actions_and_positions(tmp_path: Path, log_table: pa.Table) -> None:
    ids = np.unique(log_table.column("item_id").to_numpy(zero_copy_only=False), return_inverse=True)[1]
    table = log_table.set_column(0, "item_id", pa.array(ids))
    path = tmp_path / "log.csv"
    pacsv.write_csv(table, path)
    out = run("evaluate", "--file", str(path), *MAPPING, "--column", "position=slot", "--arm", "a", "--arm", "b",
              "--arm", "c", "--bootstrap", "0", "--target", "always:b")
    assert out["arms"] == ["a", "b", "c"]
    # Positions 10 and 20 are ranked densely to 0 and 1: b only ever at 1, a only at 0, so
    # always:b leaves the slot-0 rounds unsupported.
    assert all(r["support_deficit"] > 0.5 for r in out["estimates"])


def test_replay_and_its_plot(tmp_path: Path, log_table: pa.Table) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(log_table, path)
    out = run("replay", "--file", str(path), *MAPPING, "--policy", "thompson", "--policy", "static",
              "--plot", str(tmp_path / "replay.png"))
    by = {r["policy"]: r for r in out["policies"]}
    assert set(by) == {"thompson", "static"} and by["thompson"]["best_arm"] == "c"
    assert by["thompson"]["final_weights"]["c"] > 0.5 and (tmp_path / "replay.png").stat().st_size > 10_000


@pytest.mark.parametrize(("args", "says"), [
    (("--column", "action=nope"), "no column 'nope' for action"),
    (("--column", "colour=item_id"), "unknown role(s) ['colour']"),
    (("--target", "always:z"), "no arm 'z'"),
    (("--target", "live"), "target 'live' needs the experiment's spec"),
])
def test_bad_options_are_named(tmp_path: Path, log_table: pa.Table, args: tuple[str, ...], says: str) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(log_table, path)
    result = CliRunner().invoke(main, ["evaluate", "--file", str(path), *MAPPING, *args])
    assert result.exit_code != 0 and says in result.output, result.output


def test_a_target_the_log_never_supports_is_left_out_not_fatal(tmp_path: Path, log_table: pa.Table) -> None:
    """An arm retired before the window has no logged serves: `always:` it cannot be
    estimated, but the other targets still are; with it alone the error says why."""
    path = tmp_path / "log.parquet"
    pq.write_table(log_table, path)
    arms = ("--arm", "a", "--arm", "b", "--arm", "c", "--arm", "retired")
    out = run("evaluate", "--file", str(path), *MAPPING, *arms, "--bootstrap", "0", "--target", "always:retired",
              "--target", "always:c", "--estimator", "snips")
    assert [(r["target"], r["estimator"]) for r in out["estimates"]] == [("always:c", "snips")]
    result = CliRunner().invoke(main, ["evaluate", "--file", str(path), *MAPPING, *arms, "--target", "always:retired",
                                       "--estimator", "snips"])
    assert result.exit_code != 0 and "always:retired: snips: the target gives probability 0" in result.output, \
        result.output
