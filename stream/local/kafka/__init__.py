"""A real local Apache Kafka 4.x broker (KRaft) for tests and `klaviyo-stream kafka`.

No Docker and no mock: the broker's jars are resolved from Maven Central once (see `ensure_jars`)
and the broker runs as a `java` child process on 127.0.0.1.
"""

from stream.local.kafka.broker import LocalKafka, ensure_jars, run_foreground

__all__ = ["LocalKafka", "ensure_jars", "run_foreground"]
