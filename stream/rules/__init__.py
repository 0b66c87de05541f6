"""Rules the user writes: which calls go to Klaviyo and under which metric (event definitions),
transformations, HIPAA allow-lists and consent rules, and the loader of their files."""
