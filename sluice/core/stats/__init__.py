"""Statistics for comparing arms, one module per family:

- `significance`: two-proportion z-test, Welch's t-test, chi-square across arms, SRM;
- `intervals`: Wilson, Newcombe, Student t / Welch, delta-method relative uplift;
- `multiple`: Holm and Benjamini–Hochberg adjusted p-values;
- `bayes`: P(best), P(beat control), expected loss;
- `comparison`: `ArmData` and `compare`, which computes all of the above for K arms;
- `checks`: `StatsInputError`, raised for inputs that cannot describe real data.

Sequential (always-valid) tests live in `sluice.core.sequential`, sample sizes in
`sluice.core.power`, inverse-propensity estimates in `sluice.core.ipw`, and the decision
rules in `sluice.core.decisions`. Import from the modules themselves; this package
re-exports nothing, so importing one family never loads the others.
"""
