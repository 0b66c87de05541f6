"""Operator commands: `doctor` (is everything set up?), `status` (how is the group doing?) and
`dlq list` / `dlq show` (what is in the dead-letter topic?). Each reads the real dependencies;
none of them changes anything or prints a secret."""
