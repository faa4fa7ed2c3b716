"""Every entity's latest statistics, for priors pooled across an experiment's entities.

An experiment whose policy sets `pooled_prior: true` gives each entity a Beta prior per arm
fitted (empirical Bayes, `sluice.core.posteriors.pooled_beta_prior`) to the window
statistics of the *other* entities of the experiment: a new advertiser starts from what the
others learned instead of from nothing, and the prior follows them as they learn. Entities
live on other partitions, often in other workers, so the statistics come from the compacted
weights topic, where every worker publishes them with every table.
"""

from __future__ import annotations

from typing import Any

from sluice.avro import SingleObjectSerde
from sluice.core.posteriors import BetaPrior, pooled_beta_prior
from sluice.core.spec import ExperimentSpec
from sluice.kafka.follower import CompactedTopicFollower
from sluice.kafka.security import PLAINTEXT, KafkaSecurity


class PeerStatistics:
    """Follows the weights topic: (experiment, entity) → arm → (count, sum) of its latest table."""

    def __init__(self, bootstrap: str, topic: str, serde: SingleObjectSerde, *, security: KafkaSecurity = PLAINTEXT) -> None:
        self._serde = serde
        self._follower: CompactedTopicFollower[tuple[str, str, dict[str, tuple[float, float]]]] = \
            CompactedTopicFollower(bootstrap, topic, self._decode, security=security)

    def _decode(self, value: bytes) -> tuple[str, str, dict[str, tuple[float, float]]]:
        table = self._serde.decode(value, "WeightTable").record
        stats = {s["arm"]: (float(s["count"]), float(s["sum"])) for s in table["statistics"]}
        return table["experiment_id"], table["entity"], stats

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def of_experiment(self, experiment_id: str) -> dict[str, dict[str, tuple[float, float]]]:
        """entity → arm → (count, sum), as the latest tables of the experiment say."""
        return {entity: stats for exp, entity, stats in list(self._follower.latest.values()) if exp == experiment_id}

    def pooled_prior(self, spec: ExperimentSpec, entity: str) -> tuple[BetaPrior, ...] | None:
        """The pooled prior of `entity` per live arm, or None when the spec does not ask for
        one. Arms the others lack fall back to the policy's own prior (flat by default)."""
        params: dict[str, Any] = dict(spec.policy.params)
        if not params.get("pooled_prior"):
            return None
        fallback = BetaPrior(params.get("prior_alpha", 1.0), params.get("prior_beta", 1.0))
        others = [stats for name, stats in self.of_experiment(spec.id).items() if name != entity]
        priors = []
        for arm in spec.arm_names:
            pairs = [stats[arm] for stats in others if arm in stats]
            counts = [n for n, _ in pairs]
            sums = [min(s, n) for n, s in pairs]
            priors.append(pooled_beta_prior(sums, counts, max_strength=params.get("pooled_max_strength", 100.0),
                                            fallback=fallback))
        return tuple(priors)
