"""Many Klaviyo accounts from one consumer group: which accounts there are and which records
are whose, and each account's own state, client and governor.

- `model`: the types (`Account`, its key by reference `KeyRef`, its `Rule`s; `Accounts`);
- `config`: the accounts file (`ACCOUNTS_FILE`) → `Accounts`; without it one implicit account;
- `routing`: (topic, headers, call) → the accounts it goes to and why;
- `shares`: each account's rate share for this replica, from the group's assignment;
- `stores`: a state store per account (a Redis prefix, a SQLite file);
- `connections`: a Klaviyo client and a governor per account.

Nothing here imports the engine's per-record stages; `stores` and `connections` use the
pipeline's builders, so import them by module (this package's `__init__` imports nothing).
"""
