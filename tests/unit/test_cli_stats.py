"""`sluice stats compare | power | decide` as a user runs them: flags or JSON on stdin,
a table or JSON out, one-line errors naming the field."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sluice.cli import main
from sluice.core.power import sample_size
from sluice.core.stats.significance import two_proportion_ztest


def run(args: list[str], stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["stats", *args], input=stdin)
    return result.exit_code, result.output


def test_compare_with_flags_prints_tests_intervals_p_best_and_srm() -> None:
    code, out = run(["compare", "--arm", "a:10000:1000", "--arm", "b:10000:1100", "--expected", "1,1"])
    assert code == 0, out
    for text in ("P(best)", "exp. loss", "p Holm", "mSPRT p", "chi-square", "sample ratio (SRM)"):
        assert text in out
    assert "+10.00%" in out  # b's relative uplift


def test_compare_json_from_stdin_matches_the_core() -> None:
    payload = {
        "arms": [{"name": "old", "n": 8000, "successes": 640}, {"name": "new", "n": 8100, "successes": 729}],
        "control": "old",
        "expected_serves": [0.5, 0.5],
    }
    code, out = run(["compare", "--json"], json.dumps(payload))
    assert code == 0, out
    result = json.loads(out)
    contrast = result["contrasts"][0]
    assert contrast["name"] == "new"
    assert contrast["p_value"] == pytest.approx(two_proportion_ztest(640, 8000, 729, 8100).p_value)
    assert sum(a["p_best"] for a in result["arms"]) == pytest.approx(1.0)
    assert result["arms"][0]["p_beat_control"] is None  # NaN for the control becomes null
    assert result["srm"]["df"] == 1


def test_compare_continuous_rewards() -> None:
    code, out = run(["compare", "--json", "--arm", "a:500:5000:60000", "--arm", "b:500:5300:66000"])
    assert code == 0, out
    result = json.loads(out)
    assert result["kind"] == "continuous" and result["chi_square"] is None
    assert result["contrasts"][0]["difference"] == pytest.approx(0.6)


def test_power_flags_and_json_agree_with_the_core() -> None:
    code, out = run(["power", "--baseline", "0.1", "--mde", "0.05", "--arms", "3", "--json"])
    assert code == 0, out
    assert json.loads(out)["per_arm"] == sample_size(0.1, 0.05, n_arms=3).per_arm
    code, out = run(["power"], json.dumps({"baseline": 10, "mde": 0.5, "absolute": True, "kind": "continuous", "sd": 4}))
    assert code == 0, out
    assert f"{sample_size(10, 0.5, relative=False, kind='continuous', sd=4).per_arm:,}" in out


def test_decide_prints_the_verdict_the_rule_and_per_arm_actions() -> None:
    code, out = run(
        ["decide", "--arm", "a:20000:2000", "--arm", "b:20000:2500", "--days-in-window", "7", "--days-running", "8"]
    )
    assert code == 0, out
    assert out.startswith("SHIP  (winner)")
    assert "Ship b" in out and "the winner takes all traffic" in out


def test_decide_json_from_stdin_with_criteria() -> None:
    payload = {
        "arms": [{"name": "a", "n": 20000, "successes": 2000}, {"name": "b", "n": 20000, "successes": 2140}],
        "days_in_window": 7,
        "days_running": 8,
        "criteria": {"sequential": False, "min_uplift": 0.05},
        "current_weights": [0.5, 0.5],
    }
    code, out = run(["decide", "--json"], json.dumps(payload))
    assert code == 0, out
    d = json.loads(out)
    assert d["verdict"] == "ship" and d["winner"] == "b"
    assert d["criteria"]["min_uplift"] == 0.05
    # A flag overrides the JSON: at +10 % uplift required, +7 % does not ship.
    code, out = run(["decide", "--json", "--criteria", '{"sequential": false, "min_uplift": 0.1}'], json.dumps(payload))
    assert json.loads(out)["verdict"] != "ship"


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["compare", "--arm", "a:10:x", "--arm", "b:10:2"], None, "--arm a: successes must be a number, but 'x'"),
        (["compare", "--arm", "a:10", "--arm", "b:10:2"], None, "--arm must be NAME:N:SUCCESSES or NAME:N:SUM:SUM_SQ"),
        (["compare", "--arm", "a:10:20", "--arm", "b:10:2"], None, "successes must be <= n"),
        (["compare", "--arm", "a:10:2", "--arm", "b:10:2", "--control", "zz"], None, "control: 'zz' is not one of"),
        (["compare"], '{"arms": [{"name": "a", "n": -5, "successes": 1}, {"name": "b", "n": 9, "successes": 1}]}',
         "arms.0.n: Input should be greater than or equal to 0 (got -5)"),
        (["compare"], "not json", "stdin: not valid JSON"),
        (["compare"], "", "no input: give --arm flags, or a JSON object on stdin"),
        (["compare", "--arm", "a:10:2", "--arm", "b:10:20:45"], None, "every arm must have the same kind of reward"),
        (["power", "--baseline", "0.9", "--mde", "0.5"], None, "mde must move the baseline rate 0.9"),
        (["power", "--baseline", "10", "--mde", "0.1", "--kind", "continuous"], None, "sd must be a positive number"),
        (["decide", "--arm", "a:2000:200", "--arm", "b:2000:210", "--days-in-window", "7"], None,
         "days_running: Field required"),
        (["decide", "--arm", "a:2000:200", "--arm", "b:2000:210", "--days-in-window", "7", "--days-running", "8",
          "--criteria", '{"confidence": 2}'], None, "criteria.confidence: Input should be less than 1 (got 2)"),
        (["decide", "--arm", "a:2000:200", "--arm", "b:2000:210", "--days-in-window", "7", "--days-running", "8",
          "--weights", "0.9,0.9"], None, "current_weights must be 2 probabilities"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(args: list[str], stdin: str | None, message: str) -> None:
    code, out = run(args, stdin)
    assert code == 1
    assert message in out
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) == 1, out


@pytest.mark.parametrize("command", ["compare", "power", "decide"])
def test_help_documents_the_json_input(command: str) -> None:
    code, out = run([command, "--help"])
    assert code == 0 and "JSON object on stdin" in out
