"""Operator commands: `doctor` (is everything set up?), `status` (how is the group doing?),
`dlq list` / `show` / `replay` (the dead-letter topic), `produce` (publishing calls) and
`test-event` (one call through the pipeline, shown and sent)."""
