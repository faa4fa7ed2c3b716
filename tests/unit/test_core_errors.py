"""The core's errors share one base class, so the CLI and the worker catch one thing."""

from __future__ import annotations

import pytest

from sluice.core.allocation import AllocationError
from sluice.core.assignment import AssignmentError
from sluice.core.errors import CoreInputError
from sluice.core.guardrails import GuardrailError
from sluice.core.policies import PolicyConfigError, PolicyContext, policy_probabilities
from sluice.core.posteriors import PriorError
from sluice.core.spec import SpecError
from sluice.core.stats.checks import StatsInputError
from sluice.core.sufficient import ArmStatistics, StatisticsInputError
from sluice.core.thompson import PosteriorInputError


@pytest.mark.parametrize("error", [AllocationError, AssignmentError, GuardrailError, PolicyConfigError, PriorError,
                                   SpecError, StatsInputError, StatisticsInputError, PosteriorInputError])
def test_every_core_error_is_a_core_input_error(error: type[Exception]) -> None:
    assert issubclass(error, CoreInputError) and issubclass(error, ValueError)


def test_a_bad_policy_call_is_caught_as_a_core_input_error() -> None:
    with pytest.raises(CoreInputError, match="no-such-policy"):
        policy_probabilities("no-such-policy", {}, ArmStatistics.zeros(2), PolicyContext(("a", "b"), "binary"))
