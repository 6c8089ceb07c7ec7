"""The README's commands and the examples, run as a user would run them, against the offline sandbox."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from moneykit_async import IntrospectionCache, MoneyKitSession, RetryPolicy
from moneykit_async.cli._demo import run_demo
from moneykit_async.testing import FakeMoneyKit, Fault

from .helpers import clean_env

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quickstart_runs_against_the_sandbox() -> None:
    result = run("examples/quickstart.py")
    assert result.returncode == 0, result.stderr
    assert "(offline sandbox)" in result.stdout
    assert "My client: sandbox_demo_client" in result.stdout
    assert "A bogus token is rejected: api_error.auth.unauthorized" in result.stdout


@pytest.mark.slow
def test_demo_command_prints_a_summary() -> None:
    result = run("-m", "moneykit_async", "demo")
    assert result.returncode == 0, result.stderr
    assert "Minted an access token for sandbox_demo_client" in result.stdout
    assert "checked 300 tokens" in result.stdout
    assert "The sandbox saw 1 token request(s) and 301 introspection(s)." in result.stdout
    assert "sandbox_secret_" not in result.stdout + result.stderr


async def test_demo_outcomes_match_the_kinds_of_token() -> None:
    out = io.StringIO()
    counts = await run_demo(out, per_kind=10)
    assert counts == {
        "valid:valid": 10,
        "expired:api_error.auth.expired_access_token": 10,
        "revoked:api_error.auth.unauthorized": 10,
        "garbage:api_error.auth.unauthorized": 10,
    }
    assert "checked 40 tokens" in out.getvalue()


# -- examples/web_service.py -----------------------------------------------------------------------


@pytest.fixture
async def service(fake: FakeMoneyKit) -> AsyncIterator[TestClient[aiohttp.web.Request, aiohttp.web.Application]]:
    example = load_example("web_service")
    app = example.make_app(
        lambda: MoneyKitSession(
            base_url=fake.base_url,
            introspection_cache=IntrospectionCache(ttl=30),
            retry=RetryPolicy(max_retries=0),
        )
    )
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.mark.parametrize(
    ("case", "status", "error", "description"),
    [
        ("valid", 200, None, None),
        ("missing", 401, None, "needs a bearer token"),
        ("not-bearer", 401, None, "needs a bearer token"),
        ("malformed", 400, "invalid_request", "not a valid bearer token"),
        ("expired", 401, "invalid_token", "the access token expired"),
        ("revoked", 401, "invalid_token", "invalid or revoked"),
        ("garbage", 401, "invalid_token", "invalid or revoked"),
        ("disabled", 401, "invalid_token", "client is disabled"),
        ("narrow-scope", 403, "insufficient_scope", "lacks the scope link:data:read"),
        ("moneykit-down", 503, "temporarily_unavailable", "retry later"),
    ],
)
async def test_web_service_authenticates_each_request(
    fake: FakeMoneyKit,
    service: TestClient[aiohttp.web.Request, aiohttp.web.Application],
    case: str,
    status: int,
    error: str | None,
    description: str | None,
) -> None:
    token = fake.mint_token()
    headers = {"Authorization": f"Bearer {token}"}
    if case == "missing":
        headers = {}
    elif case == "not-bearer":
        headers = {"Authorization": f"Basic {token}"}
    elif case == "malformed":
        headers = {"Authorization": f"Bearer {token} {token}"}
    elif case == "expired":
        fake.expire_token(token)
    elif case == "revoked":
        fake.revoke_token(token)
    elif case == "garbage":
        headers = {"Authorization": "Bearer nope"}
    elif case == "disabled":
        fake.disable_client()
    elif case == "narrow-scope":
        headers = {"Authorization": f"Bearer {fake.mint_token(fake.add_client(scope='institutions:read').client_id)}"}
    elif case == "moneykit-down":
        fake.inject("/auth/introspect", Fault(status=503))
    response = await service.get("/accounts", headers=headers)
    assert response.status == status
    body = await response.json()
    if description is None:
        assert body["client_id"] == fake.client_id
        return
    assert body.get("error") == error
    assert description in body["error_description"]
    challenge = response.headers.get("WWW-Authenticate")
    if status == 503:
        assert challenge is None
    elif error is None:
        assert challenge == 'Bearer realm="api"'  # RFC 6750: no error information without a token
    else:
        assert challenge is not None and challenge.startswith(f'Bearer realm="api", error="{error}"')


async def test_web_service_health_is_public(
    fake: FakeMoneyKit, service: TestClient[aiohttp.web.Request, aiohttp.web.Application]
) -> None:
    response = await service.get("/health")
    assert (response.status, await response.json()) == (200, {"ok": True})
    assert fake.count("/auth/introspect") == 0


async def test_web_service_caches_introspections(
    fake: FakeMoneyKit, service: TestClient[aiohttp.web.Request, aiohttp.web.Application]
) -> None:
    headers = {"Authorization": f"Bearer {fake.mint_token()}"}
    responses = await asyncio.gather(*(service.get("/accounts", headers=headers) for _ in range(50)))
    assert {r.status for r in responses} == {200}
    assert fake.count("/auth/introspect") == 1


@pytest.mark.slow
def test_web_service_example_runs() -> None:
    result = run("examples/web_service.py")
    assert result.returncode == 0, result.stderr
    assert "valid token        -> 200" in result.stdout
    assert "missing scope      -> 403" in result.stdout
    assert 'no token           -> 401 WWW-Authenticate: Bearer realm="api"' in result.stdout
    assert "MoneyKit saw 4 introspections for 6 requests" in result.stdout


# -- examples/worker.py, batch_check.py, metrics.py ------------------------------------------------


@pytest.mark.slow
def test_worker_refreshes_in_the_background_and_stops_cleanly_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "examples/worker.py"],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    seen: list[str] = []
    try:
        while sum("refreshed token" in line for line in seen) < 2:  # the first mint, then a renewal
            line = process.stdout.readline()
            assert line, "worker exited early: " + "".join(seen)
            seen.append(line)
    finally:
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "shut down cleanly after" in out
    assert sum("job" in line and "ok (" in line for line in seen + out.splitlines()) >= 1
    assert err == ""  # no warnings, no unclosed sessions


@pytest.mark.slow
def test_batch_check_example(tmp_path: Path) -> None:
    result = run("examples/batch_check.py")
    assert result.returncode == 0, result.stderr
    assert "checked 520 tokens from tokens.txt: valid 500, AuthenticationError 20" in result.stdout


@pytest.mark.slow
def test_metrics_example_turns_events_into_metrics() -> None:
    result = run("examples/metrics.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 'moneykit_requests_total{path="/auth/introspect",status="200"} 51' in lines
    assert 'moneykit_requests_total{path="/auth/introspect",status="401"} 1' in lines
    assert 'moneykit_requests_total{path="/auth/token",status="201"} 1' in lines
    assert any(line.startswith('moneykit_retries_total{reason="HTTP 503') for line in lines)
    assert "moneykit_rate_limit_paused_seconds_total 0.1" in lines
    assert "moneykit_throttled_total 1" in lines
    assert any(line.startswith("moneykit_send_rate ") for line in lines)
    assert "moneykit_token_refreshes_total 1" in lines


# -- what each example needs, missing -------------------------------------------------------------

# {down}: a loopback URL nothing listens on; {tokens}: a file of one token.
DOWN = {"MONEYKIT_BASE_URL": "http://127.0.0.1:{port}"}
CREDENTIALS = {"MONEYKIT_CLIENT_ID": "some_client", "MONEYKIT_CLIENT_SECRET": "some_secret"}
CHECK_NETWORK = "check the network and base_url"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("example", "env", "message"),
    [
        ("quickstart", {**CREDENTIALS, **DOWN}, f"quickstart: TokenRefreshError: could not obtain*{CHECK_NETWORK}"),
        (
            "quickstart",
            {"MONEYKIT_CLIENT_ID": "some_client"},
            "quickstart: ConfigurationError: client_secret is missing",
        ),
        ("worker", {**CREDENTIALS, **DOWN}, f"worker: TokenRefreshError: could not obtain*{CHECK_NETWORK}"),
        ("batch_check {tokens}", DOWN, f"batch_check: TransportError: GET /auth/introspect*{CHECK_NETWORK}"),
        ("batch_check", DOWN, "batch_check: ConfigurationError: MONEYKIT_* is set, so pass a file of its tokens"),
        (
            "distributed_check",
            {"REDIS_URL": "redis://127.0.0.1:{port}/0"},
            "distributed_check: QueueUnavailableError: cannot use Redis at REDIS_URL*start Redis",
        ),
        (
            "distributed_check",
            {**DOWN, "TOKENS_FILE": "{tokens}"},
            f"distributed_check: TransportError: GET /auth/introspect*{CHECK_NETWORK}",
        ),
    ],
)
def test_an_example_says_what_is_missing(
    example: str, env: dict[str, str], message: str, unused_port: int, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("some-token\n")
    name, *args = example.format(tokens=tokens).split()
    result = run(f"examples/{name}.py", *args, **{k: v.format(port=unused_port, tokens=tokens) for k, v in env.items()})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(re.escape(message).replace(r"\*", ".*") + ".*", line), line
    assert "some_secret" not in result.stdout + result.stderr


@pytest.mark.slow
def test_distributed_check_without_the_arq_extra_says_how_to_install_it() -> None:
    code = "import runpy, sys; sys.modules['arq'] = None; runpy.run_path(sys.argv.pop(1), run_name='__main__')"
    result = run("-c", code, "examples/distributed_check.py")
    assert result.returncode == 1
    assert result.stderr == (
        "distributed_check: moneykit_async.contrib.arq needs the 'arq' extra: pip install 'moneykit-async[arq]'\n"
    )


@pytest.mark.slow
def test_distributed_check_says_so_when_a_worker_exits_before_it_is_ready() -> None:
    # A worker that cannot even read its settings exits at once: the wait for it must notice, not spin.
    code = (
        "import asyncio, os, runpy, sys\n"
        "example = runpy.run_path(sys.argv[1])\n"
        "async def start():\n"
        "    async with example['arq_workers']({**os.environ, 'MONEYKIT_ARQ_REDIS_URL': 'nonsense://'}, 1):\n"
        "        pass\n"
        "asyncio.run(start())\n"
    )
    result = run("-c", code, "examples/distributed_check.py")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].endswith(
        "WorkerError: an arq worker exited (status 1) before it was ready: RuntimeError: invalid DSN scheme"
    )


@pytest.mark.slow
async def test_ctrl_c_stops_distributed_check_and_its_workers(
    fake: FakeMoneyKit, redis_url: str, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(fake.mint_token() + "\n" for _ in range(3)))
    # The example's own check that MoneyKit answers passes; the workers' introspections hang.
    fake.inject("/auth/introspect", Fault(), *[Fault(delay=600) for _ in range(3)])
    # As started from a terminal: a background job (`make test &`, nohup, CI) inherits SIGINT ignored.
    at_a_terminal = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = [sys.argv[1]]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", at_a_terminal, "examples/distributed_check.py"),
        cwd=ROOT,
        env=clean_env(REDIS_URL=redis_url, MONEYKIT_BASE_URL=fake.base_url, TOKENS_FILE=str(tokens)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        ready = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert ready.startswith("arq workers ready (pids "), ready
        await fake.wait_for_requests(2, "/auth/introspect", within=60)  # a worker is on it: the example waits
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130
    assert err.decode() == "distributed_check: interrupted; the workers were stopped\n"
    for pid in map(int, re.findall(r"\d+", ready.partition("pids ")[2].partition(")")[0])):
        with pytest.raises(ProcessLookupError):  # stopped and reaped, not left running
            os.kill(pid, 0)
