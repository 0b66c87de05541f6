"""What every stage shares: the call and record types, per-call options, identifier
normalization, the time policy, the one exception tree, the typed settings (with the values
they check and the client configurations built from them), and the retry policy."""
