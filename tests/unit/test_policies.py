"""Policies turn per-arm statistics into probability vectors; parameters are checked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sluice.core.policies import POLICIES, PolicyConfigError, PolicyContext, policy_probabilities, validate_policy_params
from sluice.core.posteriors import BetaPrior
from sluice.core.sufficient import ArmStatistics
from sluice.core.thompson import beta_best_probabilities, top_two_probabilities

ARMS = ("a", "b", "c")
CTX = PolicyContext(ARMS)
STATS = ArmStatistics.of([100, 100, 50], [10, 20, 10])  # means 0.1, 0.2, 0.2


def test_static_gives_the_configured_weights_by_name_or_order() -> None:
    assert policy_probabilities("static", {"weights": {"a": 1, "c": 3}}, STATS, CTX).tolist() == [0.25, 0.0, 0.75]
    assert policy_probabilities("static", {"weights": [1, 1, 2]}, STATS, CTX).tolist() == [0.25, 0.25, 0.5]
    with pytest.raises(PolicyConfigError, match=r"unknown arms \['z'\]"):
        policy_probabilities("static", {"weights": {"z": 1}}, STATS, CTX)


def test_epsilon_greedy_closed_form_splits_ties() -> None:
    p = policy_probabilities("epsilon_greedy", {"epsilon": 0.3}, STATS, CTX)
    np.testing.assert_allclose(p, [0.1, 0.1 + 0.35, 0.1 + 0.35])


def test_epsilon_decays_with_observations() -> None:
    p = policy_probabilities("epsilon_greedy", {"epsilon": 0.3, "decay_observations": 250}, STATS, CTX)
    eps = 0.3 * 250 / (250 + 250)
    np.testing.assert_allclose(p, [eps / 3, eps / 3 + (1 - eps) / 2, eps / 3 + (1 - eps) / 2])


def test_unplayed_arms_come_first_in_epsilon_greedy_and_ucb1() -> None:
    stats = ArmStatistics.of([10, 0, 0], [9, 0, 0])
    np.testing.assert_allclose(policy_probabilities("ucb1", {}, stats, CTX), [0, 0.5, 0.5])
    np.testing.assert_allclose(policy_probabilities("epsilon_greedy", {"epsilon": 0}, stats, CTX), [0, 0.5, 0.5])


def test_ucb1_picks_the_highest_upper_bound() -> None:
    stats = ArmStatistics.of([100, 10, 100], [50, 4, 55])
    n = np.array([100, 10, 100])
    bound = np.array([0.5, 0.4, 0.55]) + math.sqrt(2) * np.sqrt(np.log(210) / n)
    expected = (bound == bound.max()).astype(float)
    np.testing.assert_allclose(policy_probabilities("ucb1", {}, stats, CTX), expected)


def test_thompson_uses_the_exact_probabilities_of_the_posteriors() -> None:
    p = policy_probabilities("thompson", {"prior_alpha": 2, "prior_beta": 3}, STATS, CTX)
    np.testing.assert_allclose(p, beta_best_probabilities([12, 22, 12], [93, 83, 43]))
    tt = policy_probabilities("thompson", {"top_two_beta": 0.5}, STATS, CTX)
    np.testing.assert_allclose(tt, top_two_probabilities(beta_best_probabilities([11, 21, 11], [91, 81, 41]), 0.5))


def test_thompson_takes_a_per_arm_pooled_prior_from_the_context() -> None:
    ctx = PolicyContext(ARMS, prior=(BetaPrior(1, 9), BetaPrior(1, 9), BetaPrior(30, 70)))
    np.testing.assert_allclose(policy_probabilities("thompson", {}, STATS, ctx), beta_best_probabilities([11, 21, 40], [99, 89, 110]))


def test_continuous_thompson_uses_student_t_posteriors() -> None:
    stats = ArmStatistics.of([200, 200], [200 * 5.0, 200 * 5.4], [200 * (25 + 4), 200 * (5.4**2 + 4)])
    p = policy_probabilities("thompson", {}, stats, PolicyContext(("x", "y"), reward_type="continuous"))
    assert p[1] > 0.95 and p.sum() == pytest.approx(1)


def test_a_users_reward_model_is_called_and_its_output_checked() -> None:
    p = policy_probabilities("proportional", {"callable": "tests.unit.fixtures.reward_models:favour_last"}, STATS, CTX)
    np.testing.assert_allclose(p, [1 / 6, 2 / 6, 3 / 6])
    for fn, message in [("wrong_length", r"reward_models:wrong_length returned shape \(1,\), expected \(3,\)"),
                        ("negative", r"reward_models:negative returned negative values"), ("explodes", "raised RuntimeError: model file missing"),
                        ("missing", "has no callable 'missing'")]:
        with pytest.raises(PolicyConfigError, match=message):
            policy_probabilities("proportional", {"callable": f"tests.unit.fixtures.reward_models:{fn}"}, STATS, CTX)
    with pytest.raises(PolicyConfigError, match="cannot import module 'no_such_pkg'"):
        policy_probabilities("proportional", {"callable": "no_such_pkg:f"}, STATS, CTX)


@pytest.mark.parametrize(("name", "params", "message"), [
    ("epsilon_greedy", {"epsilon": 1.5}, r"policy 'epsilon_greedy': epsilon: .*less than or equal to 1 \(got 1.5\)"),
    ("thompson", {"top_two_beta": -1}, r"policy 'thompson': top_two_beta"),
    ("ucb1", {"c": 0}, r"policy 'ucb1': c"),
    ("thompson", {"colour": "red"}, r"policy 'thompson': colour: Extra inputs are not permitted"),
    ("softmax", {}, r"unknown policy 'softmax'; registered: epsilon_greedy, proportional, static, thompson, ucb1"),
    ("proportional", {"callable": "not a path"}, r"policy 'proportional': callable"),
])
def test_bad_parameters_name_the_policy_the_field_and_the_value(name: str, params: dict, message: str) -> None:
    with pytest.raises(PolicyConfigError, match=message):
        validate_policy_params(name, params)


def test_every_registered_policy_returns_a_distribution() -> None:
    defaults = {"static": {"weights": [1, 2, 3]}, "proportional": {"callable": "tests.unit.fixtures.reward_models:favour_last"}}
    for name in POLICIES:
        p = policy_probabilities(name, defaults.get(name, {}), STATS, CTX)
        assert p.shape == (3,) and np.all(p >= 0) and p.sum() == pytest.approx(1)
