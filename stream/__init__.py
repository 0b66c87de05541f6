"""Kafka → Klaviyo stream processor.

The package tree reads like the pipeline:
consume → decode → route → transform → dedup → identity → batch → deliver → ack.
"""

__version__ = "0.1.0"
