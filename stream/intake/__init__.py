"""Intake: records in from Kafka (the consumer thread, partition generations, pause/resume) and
decoded into calls (Avro single-object or Confluent wire format, peeked for routing first)."""
