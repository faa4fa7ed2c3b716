"""The pure domain of Sluice: assignment, policies, posteriors, windows, statistics,
guardrails and decisions.

Everything here takes numbers and returns numbers. It imports numpy, scipy and pydantic
and nothing of ours outside `sluice.core`; it never reads Kafka, ClickHouse, the network,
a clock or a global. Randomness, time and configuration come in as arguments.
"""
