"""`moneykit-async sandbox`: run the offline sandbox (a FakeMoneyKit), and drive a running one through its
admin API (`/_sandbox/`) from the shell: mint, revoke, expire, disable, fault, clear-faults, add-client,
requests.

A running sandbox is found by `--base-url`, else `--state-file PATH` (written by `sandbox --state-file PATH`),
else `$MONEYKIT_BASE_URL`. Sandbox tokens and secrets are printed: that is what they are for, and they are
valid only in that sandbox.

`$MONEYKIT_BASE_URL` may well be MoneyKit itself, so admin calls never follow a redirect, never go over
plain http to another machine, and `revoke` and `expire`, which send a token, first check that the URL
answers like a sandbox (`GET /_sandbox/`): a real token is never sent anywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import tempfile
from collections.abc import Mapping
from typing import Any, TextIO

import aiohttp
from yarl import URL

from .._config import is_loopback, redact_url
from .._errors import InvalidInputError, TransportError, UsageError
from .._models import fingerprint
from ..testing import ADMIN_PREFIX, FakeMoneyKit
from ..testing._fake._admin import MAX_LIFETIME, MAX_MINT
from ._exit import EXIT_OK
from ._input import token_from_stdin

__all__ = ["add_parser", "run", "validate"]

ADMIN_TIMEOUT = 30.0  # seconds for one admin call: a local server answers at once, a wrong host fails slowly


# -- command line ----------------------------------------------------------------------------------


def _serve_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # `sandbox --port N` and `sandbox serve --port N` both work; the subcommand's options default to
    # SUPPRESS so that they do not overwrite what was given before the subcommand.
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--port", type=int, default=default(0), help="port to listen on (default: a free one)")
    parser.add_argument(
        "--host",
        default=default("127.0.0.1"),
        help="address to listen on (default 127.0.0.1; the admin API lets anyone who reaches it mint tokens)",
    )
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        default=default(None),
        help="write base_url, client_id and client_secret there as JSON (mode 0600) while running, "
        "for `sandbox mint --state-file PATH` and code in other languages",
    )
    parser.add_argument(
        "--token-lifetime",
        type=int,
        metavar="SECONDS",
        default=default(3600),
        help="expires_in of the tokens it issues (default 3600)",
    )
    parser.add_argument(
        "--no-admin",
        dest="admin",
        action="store_false",
        default=default(True),
        help=f"do not serve the admin API under {ADMIN_PREFIX}",
    )


def _target_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", help="the running sandbox (default: from --state-file, else $MONEYKIT_BASE_URL)")
    common.add_argument("--state-file", dest="state_in", metavar="PATH", help="the file `sandbox --state-file` wrote")
    return common


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:  # Any: the parser may be a subclass
    """Add `sandbox` and its subcommands to the top-level parser's `commands`."""
    sandbox = commands.add_parser(
        "sandbox",
        help="run the offline MoneyKit sandbox, or script a running one (mint, revoke, fault, ...)",
        description="Without a subcommand (or with `serve`): run the offline MoneyKit sandbox in the foreground, "
        f"with its admin API under {ADMIN_PREFIX}. The other subcommands drive a running sandbox.",
    )
    _serve_options(sandbox, defaults=True)
    actions = sandbox.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND")
    _serve_options(actions.add_parser("serve", help="run the sandbox (the default)"), defaults=False)
    common = _target_options()

    mint = actions.add_parser(
        "mint", parents=[common], help="issue a token (or --count N tokens); prints one a line (or JSON with --json)"
    )
    mint.add_argument("--client-id", help="whose token (default: the demo client)")
    mint.add_argument("--scope", help="its scope (default: the client's)")
    mint.add_argument("--expires-in", type=int, metavar="SECONDS", help="its lifetime (default: the sandbox's)")
    mint.add_argument(
        "--count", type=int, metavar="N", help=f"issue N tokens in one call (1 to {MAX_MINT}), printed one a line"
    )
    mint.add_argument(
        "--json",
        action="store_true",
        help="print {access_token, token_type, expires_in} ({access_tokens: [...], ...} with --count)",
    )

    for name, what in (("revoke", "revoke a token (introspection then answers 401)"), ("expire", "expire a token")):
        command = actions.add_parser(name, parents=[common], help=what)
        command.add_argument("token", nargs="?", default="-", help="the token, or - to read it from stdin (default)")

    disable = actions.add_parser("disable", parents=[common], help="disable a client from now on")
    disable.add_argument("--client-id", help="which client (default: the demo client)")

    fault = actions.add_parser("fault", parents=[common], help="script the next answers: an error status, a delay")
    fault.add_argument("--status", type=int, help="answer this HTTP status (with a MoneyKit error body)")
    fault.add_argument("--error-code", help="the body's error_code (default: MoneyKit's for the status)")
    fault.add_argument("--message", help="the body's error_message")
    fault.add_argument("--retry-after", type=float, metavar="SECONDS", help="send a Retry-After header")
    fault.add_argument("--delay", type=float, metavar="SECONDS", help="wait this long before answering")
    fault.add_argument("--disconnect", action="store_true", help="drop the connection instead of answering")
    fault.add_argument("--times", type=int, default=1, help="for the next N requests (default 1)")
    fault.add_argument("--path", help="only requests to this path, e.g. /auth/introspect (default: any)")

    actions.add_parser("clear-faults", parents=[common], help="forget the scripted answers not used yet")

    client = actions.add_parser("add-client", parents=[common], help="register a client; prints it as JSON")
    client.add_argument("--client-id", help="its id (default: generated)")
    client.add_argument("--scope", help="its scope (default: the demo client's)")
    client.add_argument("--client-name", help="its (deprecated) friendly name")
    client.add_argument("--app-name", help="its app's name")

    actions.add_parser("requests", parents=[common], help="the requests it received, as JSON Lines (redacted)")


def validate(args: argparse.Namespace) -> None:
    """Refuse option values that cannot work, with one line that says what to pass instead."""
    command = args.sandbox_command or "serve"
    if command == "serve":
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port must be from 0 (a free port) to 65535 (got {args.port})")
        if not 1 <= args.token_lifetime <= MAX_LIFETIME:
            raise UsageError(
                f"--token-lifetime must be from 1 to {MAX_LIFETIME} seconds (10 years) (got {args.token_lifetime})"
            )
    elif command == "mint":
        if args.count is not None and args.count < 1:
            raise UsageError(f"--count must be at least 1 (got {args.count})")
    elif command == "fault":
        if args.status is None and not args.delay and not args.disconnect:
            raise UsageError("sandbox fault needs --status N, --delay SECONDS or --disconnect")
        if args.times < 1:
            raise UsageError(f"--times must be at least 1 (got {args.times})")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run `sandbox [SUBCOMMAND]`; returns the exit status (errors are raised as MoneyKitError)."""
    command = args.sandbox_command or "serve"
    if command == "serve":
        return asyncio.run(serve(args, out, err))
    token = None
    if command in ("revoke", "expire"):
        token = token_from_stdin(f"sandbox {command}") if args.token == "-" else args.token
    return asyncio.run(_client_command(command, args, out, token))


# -- serving ---------------------------------------------------------------------------------------


def _is_this_machine(host: str) -> bool:
    """Loopback, or 0.0.0.0 / :: (what a state file says of `sandbox --host 0.0.0.0`): never the network."""
    try:
        return is_loopback(host) or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def write_state(path: str, state: Mapping[str, Any]) -> str:
    """Write `state` as JSON to `path`, readable by its owner only, atomically (a reader never sees half);
    returns the text written, for `remove_state`."""
    directory = os.path.dirname(os.path.abspath(path))
    text = json.dumps(state, indent=2) + "\n"
    try:
        fd, temporary = tempfile.mkstemp(prefix=".moneykit-sandbox-", dir=directory)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise UsageError(f"cannot write the --state-file {path}: {exc.strerror or exc}") from None
    return text


def remove_state(path: str, written: str) -> None:
    """Remove the state file at `path` if it still holds `written` (what this sandbox wrote, its random
    secret included): a sandbox started later with the same --state-file has replaced it and owns it now.
    (Another sandbox could still replace it between the read and the unlink: a window of microseconds.)"""
    with contextlib.suppress(OSError):
        with open(path, encoding="utf-8") as stream:
            if stream.read() != written:
                return
        os.unlink(path)


async def serve(args: argparse.Namespace, out: TextIO, err: TextIO, *, stop: asyncio.Event | None = None) -> int:
    """Run the sandbox until SIGINT or SIGTERM, or until `stop` is set if one is given (then no signal
    handler is installed: for running sandboxes inside another program, e.g. a test)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # first: a signal sent once anything is printed stops cleanly
            loop.add_signal_handler(sig, stop.set)
    async with FakeMoneyKit(
        host=args.host, port=args.port, token_lifetime=args.token_lifetime, admin=args.admin
    ) as fake:
        admin_url = fake.base_url + ADMIN_PREFIX if args.admin else None
        if admin_url and not is_loopback(args.host):
            err.write(
                f"moneykit-async: warning: anyone who can reach {admin_url} can mint tokens and script faults; "
                "pass --no-admin or --host 127.0.0.1 to prevent it\n"
            )
        state = {
            "base_url": fake.base_url,
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "admin_url": admin_url,
            "pid": os.getpid(),
        }
        written = write_state(args.state_file, state) if args.state_file else None
        try:
            out.write(
                f"MoneyKit sandbox (offline) listening at {fake.base_url}\n"
                + (
                    f"Admin API at {admin_url} (mint, revoke, expire, disable, faults: moneykit-async sandbox --help)\n"
                    if admin_url
                    else ""
                )
                + f"export MONEYKIT_BASE_URL={fake.base_url}\n"
                f"export MONEYKIT_CLIENT_ID={fake.client_id}\n"
                f"export MONEYKIT_CLIENT_SECRET={fake.client_secret}   # a sandbox secret, valid only here\n"
                + (f"State file: {args.state_file} (removed on exit)\n" if args.state_file else "")
                + "Press Ctrl-C to stop.\n"
            )
            out.flush()
            await stop.wait()
        finally:
            if written is not None:
                remove_state(args.state_file, written)
    out.write("sandbox stopped\n")
    return EXIT_OK


# -- driving a running sandbox ---------------------------------------------------------------------


def sandbox_url(args: argparse.Namespace) -> str:
    """The running sandbox's base URL: --base-url, else the --state-file's, else $MONEYKIT_BASE_URL."""
    if args.base_url:
        return str(args.base_url)
    if args.state_in:
        try:
            with open(args.state_in, encoding="utf-8") as stream:
                state = json.load(stream)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
            raise UsageError(
                f"cannot read the --state-file {args.state_in}: {reason}; "
                "it is written by `moneykit-async sandbox --state-file PATH` while the sandbox runs"
            ) from None
        base_url = state.get("base_url") if isinstance(state, dict) else None
        if not isinstance(base_url, str):
            raise UsageError(f"the --state-file {args.state_in} has no base_url; pass --base-url URL instead")
        return base_url
    env = os.environ.get("MONEYKIT_BASE_URL")
    if env:
        return env
    raise UsageError(
        "which sandbox? pass --base-url URL or --state-file PATH (written by `moneykit-async sandbox "
        "--state-file PATH`), or set MONEYKIT_BASE_URL"
    )


def _admin_base(base_url: str) -> tuple[URL, str]:
    """`base_url` checked for admin calls, and as shown in messages (its password masked, no query)."""
    wrong = f"--base-url must be an http(s) URL such as http://127.0.0.1:8765 (got {redact_url(base_url)!r})"
    try:
        url = URL(base_url)
        host = url.host
    except ValueError:
        raise UsageError(wrong) from None
    if url.scheme not in ("http", "https") or not host:
        raise UsageError(wrong)
    shown = redact_url(url.with_query(None).with_fragment(None))
    if url.scheme == "http" and not _is_this_machine(host):
        # The sandbox listens on loopback; plain http to another machine is MoneyKit or a mistake, and
        # anyone on the way could read or rewrite the calls.
        raise UsageError(
            f"refusing to send sandbox admin calls over plain http to {shown}, which is not this machine; "
            "pass --base-url http://127.0.0.1:PORT (the `moneykit-async sandbox` you started) or an https URL"
        )
    return url.with_query(None).with_fragment(None), shown


def _not_a_sandbox(shown: str, status: int, path: str) -> UsageError:
    redirect = ", a redirect, not followed" if 300 <= status < 400 else ""
    return UsageError(
        f"{shown} did not answer as a moneykit-async sandbox (HTTP {status}{redirect} on {ADMIN_PREFIX}{path}); "
        "point --base-url at one started by `moneykit-async sandbox` (without --no-admin)"
    )


async def _request(
    http: aiohttp.ClientSession, url: URL, method: str, path: str, body: Mapping[str, Any] | None
) -> tuple[int, Any]:
    """(status, the JSON answer or None). Redirects are never followed: they could take the body (a
    token) to another host."""
    target = URL(str(url).rstrip("/") + ADMIN_PREFIX + path)
    async with http.request(method, target, json=body, allow_redirects=False) as response:
        status, raw = response.status, await response.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def _answers_like_a_sandbox(status: int, data: Any, method: str, path: str) -> bool:
    """Whether `GET /_sandbox/` answered as a moneykit-async sandbox with the endpoint `method path` does."""
    if status != 200 or not isinstance(data, dict):
        return False
    endpoints = data.get("endpoints")
    return (
        isinstance(data.get("base_url"), str)
        and isinstance(data.get("client_id"), str)
        and isinstance(endpoints, list)
        and f"{method} {ADMIN_PREFIX}{path}" in endpoints
    )


async def admin_call(
    base_url: str, method: str, path: str, body: Mapping[str, Any] | None = None, *, sandbox_first: bool = False
) -> dict[str, Any]:
    """One call to the admin API of the sandbox at `base_url`; its JSON answer, or a MoneyKitError that
    says what to do. `sandbox_first` (for calls that carry a token): first check with `GET /_sandbox/`
    that `base_url` is a running sandbox, and send nothing else unless it is."""
    url, shown = _admin_base(base_url)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ADMIN_TIMEOUT)) as http:
            if sandbox_first:
                status, data = await _request(http, url, "GET", "", None)
                if not _answers_like_a_sandbox(status, data, method, path):
                    raise UsageError(
                        f"{shown} is not a running moneykit-async sandbox (GET {ADMIN_PREFIX}: HTTP {status}, "
                        "not a sandbox's answer), so the token was not sent; pass the sandbox's --base-url "
                        "or --state-file"
                    )
            status, data = await _request(http, url, method, path, body)
            refused = _refusal(status, data)
            if refused is not None and not refused[0].startswith("sandbox_error.") and not sandbox_first:
                # A MoneyKit-shaped refusal (a scope wider than the client's, refused as /auth/token
                # refuses it) is the sandbox's only if the URL answers like one: MoneyKit itself refuses so.
                probe = await _request(http, url, "GET", "", None)
                if not _answers_like_a_sandbox(*probe, method, path):
                    refused = None
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = "no answer within 30 s" if isinstance(exc, TimeoutError) else type(exc).__name__
        raise TransportError(
            f"cannot reach the sandbox at {shown} ({reason}); start one with `moneykit-async sandbox` "
            "or pass the right --base-url"
        ) from None
    if refused is not None:
        raise InvalidInputError(f"the sandbox refused: {refused[1]}")
    if not isinstance(data, dict) or not 200 <= status < 300:
        raise _not_a_sandbox(shown, status, path)
    return data


def _refusal(status: int, data: Any) -> tuple[str, str] | None:
    """(error_code, error_message) of a 4xx answer with an error body, else None."""
    if not 400 <= status < 500 or not isinstance(data, dict):
        return None
    code, message = data.get("error_code"), data.get("error_message")
    return (code, message) if isinstance(code, str) and isinstance(message, str) else None


def _given(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


async def _client_command(command: str, args: argparse.Namespace, out: TextIO, token: str | None) -> int:
    base_url = sandbox_url(args)
    if command == "mint":
        minted = await admin_call(
            base_url,
            "POST",
            "tokens",
            _given(client_id=args.client_id, scope=args.scope, expires_in=args.expires_in, count=args.count),
        )
        tokens = minted["access_tokens"] if args.count is not None else [minted["access_token"]]
        out.write(json.dumps(minted) + "\n" if args.json else "".join(f"{token}\n" for token in tokens))
    elif command in ("revoke", "expire"):
        assert token is not None
        await admin_call(base_url, "POST", f"tokens/{command}", {"access_token": token}, sandbox_first=True)
        out.write(f"{command}d the token with fingerprint {fingerprint(token)}\n")
    elif command == "disable":
        client = await admin_call(base_url, "POST", "clients/disable", _given(client_id=args.client_id))
        out.write(f"disabled client {client['client_id']} from {client['disabled_at']}\n")
    elif command == "fault":
        queued = await admin_call(
            base_url,
            "POST",
            "faults",
            _given(
                status=args.status,
                error_code=args.error_code,
                error_message=args.message,
                retry_after=args.retry_after,
                delay=args.delay,
                disconnect=args.disconnect or None,
                times=args.times,
                path=args.path,
            ),
        )
        out.write(f"queued {queued['queued']} fault(s) for {args.path or 'any API path'}\n")
    elif command == "clear-faults":
        cleared = await admin_call(base_url, "DELETE", "faults")
        out.write(f"cleared {cleared['cleared']} queued fault(s)\n")
    elif command == "add-client":
        client = await admin_call(
            base_url,
            "POST",
            "clients",
            _given(client_id=args.client_id, scope=args.scope, client_name=args.client_name, app_name=args.app_name),
        )
        out.write(json.dumps(client) + "\n")
    else:  # requests
        recorded = await admin_call(base_url, "GET", "requests")
        for request in recorded["requests"]:
            out.write(json.dumps(request) + "\n")
    return EXIT_OK
