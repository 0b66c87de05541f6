"""What every stage shares: the call and record types, per-call options, identifier
normalization, the time policy, the one exception tree, the typed settings, and the retry policy."""
