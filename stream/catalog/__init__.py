"""Catalog stage: records of product topics (`CATALOG_TOPICS`) → catalog resources → Klaviyo's
asynchronous bulk jobs, beside the event path and bounded on its own.

decode (`decode`: Avro, Confluent, JSON; Debezium envelopes through a column mapping,
`debezium`) → a `Resource` per record (`records`) → the newest version of each resource waits
in the stage (`stage`) → jobs of up to 100 per kind and action, create or update decided from
what the state store knows Klaviyo accepted → each job polled until complete (`jobs`) →
per-resource outcomes to the completion ledger (delivered, or a dead letter with Klaviyo's
error). Job ids live in the state store, so a crash picks its jobs up again.
"""
