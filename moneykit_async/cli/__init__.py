"""The `moneykit-async` command line (also `python -m moneykit_async`).

    moneykit-async introspect [-]             details of the token on stdin (or of the configured client's) as JSON
    moneykit-async check [FILE|-]             check one token per line; JSON Lines out, summary on stderr
    moneykit-async sandbox [serve] [--port N] run the offline sandbox (a FakeMoneyKit) in the foreground
    moneykit-async sandbox mint|revoke|expire|disable|fault|clear-faults|add-client|requests
                                              script a running sandbox through its admin API
    moneykit-async demo                       the SDK end to end against the built-in sandbox

Credentials and the base URL come from MONEYKIT_CLIENT_ID, MONEYKIT_CLIENT_SECRET, MONEYKIT_ACCESS_TOKEN
and MONEYKIT_BASE_URL; --base-url overrides the last. Tokens and secrets are never printed (sandbox ones
excepted). Pass tokens on standard input, not as arguments: other users can read a process's arguments
(ps, shell history).

Modules, each importing only those listed before it: `_exit` (exit statuses, error lines), `_input` (reading tokens),
`_check` (check, progress), `_demo`, `_sandbox`, `_main` (the parser and `main`). No module of the library
outside this package imports it.
"""

from ._exit import EXIT_CODES, exit_code_for
from ._main import main

__all__ = ["EXIT_CODES", "exit_code_for", "main"]
