"""`sluice stats thompson` as a person (or a script) uses it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sluice.cli import main
from sluice.core.thompson import beta_best_probabilities, student_t_best_probabilities


def run(payload: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["stats", "thompson", *args], input=payload)
    return result.exit_code, result.output


def test_beta_posteriors_print_a_table_with_arm_names() -> None:
    code, out = run(json.dumps({"family": "beta", "alpha": [11, 21], "beta": [91, 81], "arms": ["old", "new"]}))
    assert code == 0, out
    p = beta_best_probabilities([11, 21], [91, 81])
    assert out.splitlines()[0].split() == ["arm", "P(best)"]
    assert out.splitlines()[2].split() == ["new", f"{p[1]:.6g}"]


def test_json_output_for_scripts() -> None:
    code, out = run(json.dumps({"family": "student_t", "loc": [0, 0.2], "scale": [0.1, 0.1], "df": [20, 20]}), "--json")
    assert code == 0, out
    assert json.loads(out)["p"] == pytest.approx(student_t_best_probabilities([0, 0.2], [0.1, 0.1], [20, 20]).tolist())


@pytest.mark.parametrize(("payload", "message"), [
    ("not json", "input is not JSON"),
    ('{"family": "gamma"}', "family: must be \"beta\" or \"student_t\", got 'gamma'"),
    ('{"family": "beta", "alpha": [1, 0], "beta": [1, 1]}', "alpha.1: Input should be greater than 0 (got 0)"),
    ('{"family": "beta", "alpha": [1, 2], "beta": [1]}', "lengths differ: alpha=2, beta=1"),
    ('{"family": "beta", "beta": [1]}', "alpha: Field required"),
])
def test_bad_input_is_one_line_naming_the_field(payload: str, message: str) -> None:
    code, out = run(payload)
    assert code == 1
    assert message in out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out
