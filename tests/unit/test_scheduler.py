"""The training scheduler's decision: what is due, in what order, and which retrainings share a job."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.core.scheduler import (AGE, DAY_MS, DROP, ROWS, Fleet, Grouping, Policies, SchedulerInputError,
                                   TrainingPolicy, plan)

NOW = 1_800_000_000_000
POLICIES = Policies({"gbdt": TrainingPolicy(every_days=7, new_rows=100_000, reward_drop=0.1),
                     "two-tower": TrainingPolicy(every_days=14)})


def fleet(rows: list[dict]) -> Fleet:
    """Rows with defaults: trained a day ago, little new data, 10k rows, 1,000 serves a day."""
    d = [{"model_type": "gbdt", "age_days": 1.0, "rows_since": 10, "rows": 10_000, "feature_set": "clicks@1",
          "window_days": 28.0, "serves_per_day": 1000.0, "reward_now": np.nan, "reward_trained": np.nan,
          "best_reward": np.nan} | r for r in rows]
    return Fleet.of([r["entity"] for r in d], [r["model_type"] for r in d],
                    trained_at_ms=[NOW - int(r["age_days"] * DAY_MS) for r in d],
                    rows_since=[r["rows_since"] for r in d], rows=[r["rows"] for r in d],
                    feature_set=[r["feature_set"] for r in d], window_days=[r["window_days"] for r in d],
                    serves_per_day=[r["serves_per_day"] for r in d], reward_now=[r["reward_now"] for r in d],
                    reward_trained=[r["reward_trained"] for r in d], best_reward=[r["best_reward"] for r in d])


def test_each_rule_makes_a_model_due_and_says_so() -> None:
    f = fleet([{"entity": "fresh"}, {"entity": "old", "age_days": 8},
               {"entity": "more-data", "rows_since": 150_000},
               {"entity": "decayed", "reward_trained": 0.05, "reward_now": 0.04},
               {"entity": "small-dip", "reward_trained": 0.05, "reward_now": 0.048}])
    p = plan(f, POLICIES, NOW)
    assert p.due.tolist() == [False, True, True, True, False]
    assert [int(r) for r in p.reasons] == [0, AGE, ROWS, DROP, 0]
    assert p.reason_names(3) == ["reward_drop"]
    assert set(p.order.tolist()) == {1, 2, 3}


def test_decaying_and_due_models_come_before_fresh_ones_and_worth_orders_them() -> None:
    f = fleet([{"entity": "fresh", "reward_now": 0.05, "reward_trained": 0.05, "best_reward": 0.05},
               {"entity": "stale-quiet", "age_days": 9, "reward_now": 0.05, "serves_per_day": 100.0},
               {"entity": "stale-busy", "age_days": 9, "reward_now": 0.05, "serves_per_day": 10_000.0},
               {"entity": "decaying", "reward_trained": 0.06, "reward_now": 0.045, "serves_per_day": 5_000.0}])
    p = plan(f, POLICIES, NOW)
    assert p.order.tolist() == [3, 2, 1]  # 75 rewards a day recovered, then staleness by traffic
    assert p.expected_gain[3] == pytest.approx(5_000 * 0.015)
    assert p.expected_gain[2] == pytest.approx(10_000 * 0.02 * (9 / 7) * 0.05)
    assert not p.due[0] and p.expected_gain[0] == pytest.approx(1000 * 0.02 * (1 / 7) * 0.05)  # worth, not due


def test_a_gap_to_the_entity_s_best_arm_counts_in_part() -> None:
    f = fleet([{"entity": "e", "age_days": 8, "reward_now": 0.03, "reward_trained": 0.03, "best_reward": 0.05}])
    p = plan(f, POLICIES, NOW, gap_share=0.5)
    assert p.expected_gain[0] == pytest.approx(1000 * 0.5 * 0.02 + 1000 * 0.02 * (8 / 7) * 0.03)


def test_an_entity_override_wins_over_its_model_type() -> None:
    policies = Policies(POLICIES.by_model_type, {("vip", "gbdt"): TrainingPolicy(every_days=1)})
    f = fleet([{"entity": "vip", "age_days": 2}, {"entity": "other", "age_days": 2}])
    assert plan(f, policies, NOW).due.tolist() == [True, False]


def test_similar_datasets_share_a_job_and_others_do_not() -> None:
    f = fleet([{"entity": "a", "age_days": 8, "rows": 10_000}, {"entity": "b", "age_days": 8, "rows": 30_000},
               {"entity": "c", "age_days": 8, "rows": 200_000},  # too large for a's job: its own
               {"entity": "d", "age_days": 8, "rows": 12_000, "feature_set": "clicks@2"},  # other features
               {"entity": "e", "age_days": 8, "rows": 12_000, "window_days": 14.0},  # other window
               {"entity": "f", "age_days": 15, "rows": 12_000, "model_type": "two-tower"},  # other type
               {"entity": "g", "rows": 12_000}])  # not due
    p = plan(f, POLICIES, NOW, grouping=Grouping(size_ratio=4))
    groups = sorted(sorted(f.entity[i] for i in j.members) for j in p.jobs)
    assert groups == [["a", "b"], ["c"], ["d"], ["e"], ["f"]]
    ab = next(j for j in p.jobs if len(j.members) == 2)
    assert ab.rows == 40_000 and (ab.model_type, ab.feature_set, ab.window_days) == ("gbdt", "clicks@1", 28.0)


def test_windows_cut_minutes_apart_are_the_same_window() -> None:
    """Windows cut from each entity's own event times differ by minutes; to the hour they
    are one window, and one job."""
    f = fleet([{"entity": "a", "age_days": 8, "window_days": 1.700}, {"entity": "b", "age_days": 8, "window_days": 1.712},
               {"entity": "c", "age_days": 8, "window_days": 1.75}])  # an hour longer: another window
    groups = sorted(sorted(f.entity[i] for i in j.members) for j in plan(f, POLICIES, NOW).jobs)
    assert groups == [["a", "b"], ["c"]]


def test_a_job_holds_at_most_max_group_entities() -> None:
    f = fleet([{"entity": f"e{i}", "age_days": 8} for i in range(7)])
    p = plan(f, POLICIES, NOW, grouping=Grouping(max_group=3))
    assert sorted(len(j.members) for j in p.jobs) == [1, 3, 3]
    assert sorted(i for j in p.jobs for i in j.members) == list(range(7))


def test_ten_thousand_entities_with_five_model_types_are_planned() -> None:
    rng = np.random.default_rng(0)
    n_entities, types = 10_000, ["gbdt", "two-tower", "wide-deep", "transformer", "lr"]
    policies = Policies({t: TrainingPolicy(every_days=float(7 + i), new_rows=50_000) for i, t in enumerate(types)})
    n = n_entities * len(types)
    f = Fleet.of([f"e{i // len(types)}" for i in range(n)], types * n_entities,
                 trained_at_ms=NOW - rng.integers(0, 20 * DAY_MS, n), rows_since=rng.integers(0, 80_000, n),
                 rows=rng.integers(1_000, 1_000_000, n), feature_set=rng.choice(["a@1", "a@2", "b@1"], n).tolist(),
                 window_days=rng.choice([14.0, 28.0], n), serves_per_day=rng.exponential(1000, n),
                 reward_now=rng.uniform(0.01, 0.1, n))
    p = plan(f, policies, NOW)
    assert 0 < p.due.sum() < n
    assert sorted(i for j in p.jobs for i in j.members) == sorted(p.order.tolist())
    assert np.all(np.diff(p.expected_gain[p.order]) <= 0)
    for job in p.jobs:
        sizes = f.rows[list(job.members)]
        assert sizes.max() <= 4 * sizes.min()
        assert len({(f.model_type[i], f.feature_set[i], f.window_days[i]) for i in job.members}) == 1


def test_inputs_it_cannot_plan_with_are_named() -> None:
    with pytest.raises(SchedulerInputError, match="model type 'svm' has no training policy"):
        plan(fleet([{"entity": "a", "model_type": "svm"}]), POLICIES, NOW)
    with pytest.raises(SchedulerInputError, match="each .entity, model type. must appear once"):
        fleet([{"entity": "a"}, {"entity": "a"}])
    with pytest.raises(SchedulerInputError, match="rows_since must be >= 0"):
        fleet([{"entity": "a", "rows_since": -1}])
    with pytest.raises(SchedulerInputError, match="reward_drop must be in"):
        TrainingPolicy(reward_drop=1.5)
    with pytest.raises(SchedulerInputError, match="feature_set has 1 rows, but entity has 2"):
        Fleet.of(["a", "b"], ["gbdt", "gbdt"], trained_at_ms=[0, 0], rows_since=[0, 0], rows=[1, 1],
                 feature_set=["x@1"], window_days=[1, 1], serves_per_day=[1, 1])
