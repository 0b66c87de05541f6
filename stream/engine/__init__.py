"""The engine that runs the stages: the service's fetch loop, the per-record processor, the gate
that orders consent and deletion actions, and the one factory that builds the pipeline."""
