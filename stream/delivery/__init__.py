"""Delivery: items batched into lanes per kind of request, a batch sent when the governor gives
a slot, and what Klaviyo answered turned into an outcome per item."""
