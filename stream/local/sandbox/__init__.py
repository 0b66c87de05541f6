"""A Klaviyo stand-in: the endpoints the service calls, validated against Klaviyo's OpenAPI.

Used as the test double for Klaviyo, the demo sink, and a target for staging deploys. It
validates requests against the vendored official OpenAPI slices (`openapi/`, MIT), answers
with Klaviyo's JSON:API errors, enforces per-endpoint burst/steady rate limits with the real
headers, refuses repeated `unique_id`s, keeps profile identity (email / phone_number /
external_id unique, 409 `duplicate_profile`), queues profile merges and applies them a moment
later (as Klaviyo's asynchronous merge task does), runs bulk import jobs, keeps consent per
channel, suppressions and lists, deletes profiles on data-privacy requests, and can inject
faults. It serves several accounts at once when asked (`SandboxConfig.accounts`), told
apart by key, each with its own data, limits and faults. `/sandbox/*` endpoints expose what
it received and holds, as JSON or, for a browser, as HTML pages (`<url>/sandbox/`).

Event and profile jobs (events, bulk events, profile bulk imports, subscription and
suppression jobs, client profiles and subscriptions) are validated when they arrive and
applied `SandboxConfig.job_delay_seconds` after the 202, in the order accepted, as Klaviyo
applies them after answering; the default 0 applies them before the answer. `GET
/sandbox/jobs` shows what waits; `POST /sandbox/jobs {"job_delay_seconds": 2, "flush": true}`
changes the delay at run time or applies every waiting job now.

    async with SandboxServer(SandboxConfig()) as sb:   # on the current loop
        ...sb.url, sb.store
    with SandboxThread(SandboxConfig()) as sb:         # on its own thread
        ...
    run(SandboxConfig(port=8080))                      # foreground, until SIGINT/SIGTERM
"""

from .app import create_app
from .config import SandboxAccount, SandboxConfig, SeedList
from .server import SandboxServer, SandboxThread, run

__all__ = [
    "SandboxAccount",
    "SandboxConfig",
    "SandboxServer",
    "SandboxThread",
    "SeedList",
    "create_app",
    "run",
]
