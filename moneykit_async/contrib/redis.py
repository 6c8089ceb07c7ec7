"""`RedisTokenStore`: one MoneyKit access token for a whole fleet of processes, kept in Redis.

    from moneykit_async import MoneyKitSession
    from moneykit_async.contrib.redis import RedisTokenStore

    mk = MoneyKitSession(token_store=RedisTokenStore("redis://localhost:6379/0"))

When many processes find the token stale at once, a short Redis lock (redis-py's `Lock`: SET NX with
an expiry, released by a compare-and-delete script) lets one of them mint while the others wait, then
read what it stored: N processes cause one `POST /auth/token`. If Redis is unreachable, slow or
broken, the session mints locally and logs a warning, so Redis trouble never becomes a MoneyKit outage.

Expiry is kept by Redis itself: the key's TTL is the token's remaining lifetime, and readers derive the
token's age from the TTL Redis reports. No machine's wall clock is trusted, so a process whose clock
is off can never make the fleet use a token MoneyKit has already expired.

Security: the store keeps the access token (never the client id's secret) in Redis, with an expiry.
Anyone who can read that Redis can use the token until it expires: use a Redis you trust, on a private
network, with authentication and TLS where it crosses machines. Install with the `redis` extra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from typing import Any

try:
    import redis.asyncio as aioredis
    from redis.exceptions import LockError
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ModuleNotFoundError(
        "moneykit_async.contrib.redis needs the 'redis' extra: pip install 'moneykit-async[redis]'",
        name=exc.name,
    ) from exc

from .. import _rate
from .._models import AccessToken
from .._store import StoreLock

__all__ = ["RedisRateLimiter", "RedisTokenStore"]

logger = logging.getLogger("moneykit_async")


class _RedisLock:
    def __init__(self, lock: Any) -> None:
        self._lock = lock

    async def acquire(self) -> bool:
        acquired: bool = await self._lock.acquire()
        return acquired

    async def release(self) -> None:
        with contextlib.suppress(LockError):  # expired meanwhile: it freed itself, nothing to undo
            await self._lock.release()


class RedisTokenStore:
    """A `TokenStore` in Redis, shared by every process that uses the same Redis and `prefix`.

    - `redis`: a `redis.asyncio.Redis` client (yours; not closed by the store) or a URL (the store
      owns that client: `await store.aclose()` when done).
    - `lock_timeout`: how long a minting process may hold the lock before Redis frees it; it outlasts
      one token request (the session's `Timeout.total`, 10 s by default).
    - `wait_timeout`: how long another process waits for that lock before minting on its own. It is
      shorter than `Timeout.total` (and than the session's `store_timeout`), so a process whose lock
      holder died still gets a token within the call's deadline.
    - `share_rate_limit`: the fleet also shares one send rate learned from 429s (`RedisRateLimiter`),
      instead of each process learning MoneyKit's limit on its own.
    """

    def __init__(
        self,
        redis: aioredis.Redis | str,
        *,
        prefix: str = "moneykit:token",
        lock_timeout: float = 15.0,
        wait_timeout: float = 4.0,
        poll_interval: float = 0.02,
        share_rate_limit: bool = False,
    ) -> None:
        if isinstance(redis, str):
            # Short socket timeouts: a Redis that does not answer must not hold up a token refresh.
            self._redis = aioredis.Redis.from_url(redis, socket_connect_timeout=1.0, socket_timeout=2.0)
            self._owns_client = True
        else:
            self._redis = redis
            self._owns_client = False
        self._prefix = prefix
        self.rate_limiter = RedisRateLimiter(self._redis, prefix=prefix + ":rate") if share_rate_limit else None
        self._lock_timeout = lock_timeout
        self._wait_timeout = wait_timeout
        self._poll_interval = poll_interval

    def __repr__(self) -> str:
        return f"RedisTokenStore(prefix={self._prefix!r})"

    @property
    def lock_wait(self) -> float:
        """How long a process waits for another's mint before minting on its own (`wait_timeout`)."""
        return self._wait_timeout

    def _key(self, namespace: str) -> str:
        return f"{self._prefix}:{namespace}"

    async def get(self, namespace: str) -> AccessToken | None:
        """The token the fleet currently shares for `namespace`, or None."""
        key = self._key(namespace)
        async with self._redis.pipeline(transaction=True) as pipe:
            raw, ttl_ms = await pipe.get(key).pttl(key).execute()
        if raw is None or ttl_ms is None or ttl_ms <= 0:  # absent, or stored without an expiry
            return None
        try:
            record = json.loads(raw)
            lifetime = int(record["expires_in"])
            remaining = min(ttl_ms / 1000, lifetime)
            # The age Redis implies, on this process's monotonic clock: no wall clock is involved.
            return AccessToken(
                str(record["access_token"]),
                str(record["token_type"]),
                lifetime,
                obtained_at=time.monotonic() - (lifetime - remaining),
            )
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring an unreadable token record in Redis")
            return None

    async def put(self, namespace: str, token: AccessToken) -> None:
        """Store `token` with a TTL of its remaining lifetime (measured on this process's monotonic clock)."""
        if token.expires_at is None:
            return  # a lifetime nobody knows cannot be shared safely
        ttl_ms = int((token.expires_at - time.monotonic()) * 1000)
        if ttl_ms <= 0:
            return
        record = {"access_token": token.access_token, "token_type": token.token_type, "expires_in": token.expires_in}
        await self._redis.set(self._key(namespace), json.dumps(record), px=ttl_ms)

    def lock(self, namespace: str) -> StoreLock:
        """redis-py's lock on `<key>:lock`, held for `lock_timeout` at most, waited for `wait_timeout`."""
        return _RedisLock(
            self._redis.lock(
                f"{self._key(namespace)}:lock",
                timeout=self._lock_timeout,
                blocking_timeout=self._wait_timeout,
                sleep=self._poll_interval,
            )
        )

    async def aclose(self) -> None:
        """Close the Redis client if the store created it from a URL."""
        if self._owns_client:
            await self._redis.aclose()


# One round trip per request: apply the outcomes reported since the last call (pairs of generation and
# 1 = accepted, 2 = refused), then book a send slot. The same decisions as moneykit_async._rate's
# RateController, line for line and with its constants, made once for the whole fleet on Redis's clock:
# a GCRA schedule at the learned rate, one cut per round judged on the new rate only, a cut to BETA of
# the rate MoneyKit accepted that lays the schedule again, CUBIC growth to a plateau once the limit is
# known, slow probing above it, and the cap at twice the fleet's accepted rate. Two things stay with
# each process: the session-wide pause when throttling persists, and waking its callers on a cut.
_RATE_TEMPLATE = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ceiling = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])  -- a slot further away is not booked (the caller will not send)
local floor = DEFAULT_FLOOR
if ceiling > 0 and ceiling < floor then floor = ceiling end  -- as RateController: never over a ceiling
local f = redis.call('HMGET', key, 'gen', 'enabled', 'cut_rate', 'w_max', 'k', 'cut_at', 'tat', 'acc', 'ref',
  's_at', 's_prev', 's_cur', 'a_at', 'a_prev', 'a_cur', 'first', 'c', 'probe', 'last_ref', 'round_at')
local gen = tonumber(f[1]) or 0
local enabled = f[2] == '1'
local cut_rate, w_max, k = tonumber(f[3]) or 0, tonumber(f[4]) or 0, tonumber(f[5]) or 0
local cut_at, tat = tonumber(f[6]) or -1e18, tonumber(f[7]) or 0
local acc, ref = tonumber(f[8]) or 0, tonumber(f[9]) or 0
local first = f[16] == '1'  -- the round after the first cut also counts the unpaced burst's answers
local c, probe = tonumber(f[17]) or CUBIC_C, tonumber(f[18]) or -1  -- probe -1: never (not settled)
local last_ref, round_at = tonumber(f[19]) or 0, tonumber(f[20]) or -1e18
if enabled and ceiling <= 0 and now - cut_at > QUIET_RESET then
  enabled, gen = false, gen + 1  -- not paced any more: the slots still booked are void
end
-- two meters (sends, accepted answers), each as a current and a previous window
local function meter(at, prev, cur, window)
  at, prev, cur = tonumber(at) or now, tonumber(prev) or 0, tonumber(cur) or 0
  if now - at >= 2 * window then return now, 0, 0 end
  if now - at >= window then return at + window, cur, 0 end
  return at, prev, cur
end
local function measured(at, prev, cur, window)
  if prev == 0 then return cur / math.max(now - at, 0.01) end  -- a first window: since its start
  local part = (now - at) / window
  return (prev * (1 - part) + cur) / window
end
local s_at, s_prev, s_cur = meter(f[10], f[11], f[12], 1.0)
local a_at, a_prev, a_cur = meter(f[13], f[14], f[15], ACCEPTED_WINDOW)
local function rate_at()
  if not enabled then
    if ceiling > 0 then return ceiling end
    return nil
  end
  if cut_at == -1e18 then return ceiling end
  local x = now - cut_at - k
  local grown
  if x < 0 then
    grown = math.max(w_max * (1 + CUBIC_C * x * x * x), cut_rate)
  elseif probe >= 0 and x > probe then
    local y = x - probe
    grown = w_max * (1 + PROBE_SPAN + ESCAPE_C * y * y * y)
  else
    grown = w_max * (1 + c * x * x * x)
  end
  if ceiling > 0 and grown > ceiling then grown = ceiling end
  if x > -k / 2 then
    local limit = math.max(cut_rate, GROWTH_CAP * measured(a_at, a_prev, a_cur, ACCEPTED_WINDOW))
    if grown > limit then grown = limit end
  end
  return math.max(floor, grown)
end
local cut = -1
local function maybe_cut()
  local answered = acc + ref
  if now - round_at < MIN_ROUND and (answered < MIN_ANSWERS or ref < math.max(MIN_REFUSED, YOUNG_REFUSED * answered))
  then return end
  local sent = measured(s_at, s_prev, s_cur, 1.0)
  local current = rate_at()
  local reference = sent
  if current ~= nil and (sent <= 0 or current < sent) then reference = current end
  if reference <= 0 then return end
  local share = acc / answered
  local new = math.max(floor, reference * math.max(MIN_KEEP, BETA * share))
  if ceiling > 0 and new > ceiling then new = ceiling end
  local shallow = share >= BETA
  if shallow and math.abs(reference - last_ref) <= NEAR * last_ref then
    w_max = math.max(new, reference * PLATEAU)  -- throttled near the same rate twice: the limit is known
    c, probe = SETTLED_C, SETTLED_HOLD
  else
    if shallow and now - cut_at < k then w_max = math.max(reference, new, w_max)
    else w_max = math.max(reference, new) end
    c, probe = CUBIC_C, -1
  end
  last_ref = reference
  if w_max > new then k = ((w_max - new) / (CUBIC_C * w_max)) ^ (1 / 3) else k = 0 end
  cut_rate, cut_at, round_at, enabled, gen, acc, ref = new, now, now, true, gen + 1, 0, 0
  tat = now + math.max(BURST_SECONDS, 1 / new)  -- the schedule is laid again, with no burst
  first = gen == 1
  cut = new
end
for i = 3, #ARGV, 2 do
  local rgen, kind = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if kind == 1 then a_cur = a_cur + 1 end
  if rgen ~= gen and not first then
    acc, ref = 0, 0  -- sent before the last cut: it competed with this round at MoneyKit
  elseif kind == 1 then
    acc = acc + 1
    if ref > 0 then maybe_cut() end
  else
    ref = ref + 1
    maybe_cut()
  end
end
local wait = 0
local rate = rate_at()
local booked = true
if rate ~= nil then
  local interval = 1 / rate
  local start = math.max(tat, now)
  wait = math.max(0, start - now - math.max(BURST_SECONDS, interval))
  booked = wait <= horizon
  if booked then tat = start + interval end
end
if booked then s_cur = s_cur + 1 end
redis.call('HSET', key, 'gen', gen, 'enabled', enabled and '1' or '0', 'cut_rate', cut_rate, 'w_max', w_max,
  'k', k, 'cut_at', cut_at, 'tat', tat, 'acc', acc, 'ref', ref, 's_at', s_at, 's_prev', s_prev, 's_cur', s_cur,
  'a_at', a_at, 'a_prev', a_prev, 'a_cur', a_cur, 'first', first and '1' or '0', 'c', c, 'probe', probe,
  'last_ref', last_ref, 'round_at', round_at)
redis.call('PEXPIRE', key, 3600000)
return {gen, tostring(wait), tostring(rate or -1), tostring(cut)}
"""
# The constants are _rate's own, written into the script: one home for each.
_RATE_SCRIPT = re.sub(
    r"\b(?!KEYS|ARGV|TIME|HMGET|HSET|PEXPIRE)[A-Z][A-Z_]+\b", lambda m: repr(getattr(_rate, m[0])), _RATE_TEMPLATE
)


class RedisRateLimiter:
    """The send rate learned from MoneyKit's 429s, shared by every process using the same Redis and key.

    Without it, each process of a fleet learns MoneyKit's limit on its own, and together they overshoot
    and oscillate. With it, the fleet books its sends from one schedule at one learned rate: every
    request makes one Redis round trip (a Lua script, which also carries the outcomes of earlier
    requests), so use it where several processes share one MoneyKit client. Switch it on with
    `RedisTokenStore(..., share_rate_limit=True)`. If Redis fails, each process falls back to its own
    rate control and logs a warning.
    """

    MAX_PENDING = 2048  # outcomes kept for the next round trip; older ones are dropped

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "moneykit:rate") -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_RATE_SCRIPT)
        self._pending: list[int] = []
        self.rate: float | None = None  # the fleet's rate as last seen (None: not paced)
        self.throttled = 0

    def __repr__(self) -> str:
        return f"RedisRateLimiter(prefix={self._prefix!r})"

    async def reserve(self, namespace: str, ceiling: float | None, horizon: float) -> tuple[int, float]:
        """Book a send slot in the fleet's schedule: (generation, seconds to wait); a slot more than
        `horizon` seconds away is not booked. Raises on Redis errors."""
        pending, self._pending = self._pending, []
        limit = min(horizon, 1e18)  # Lua has no infinity literal; a negative horizon books nothing
        try:
            gen, wait, rate, _ = await self._script(
                keys=[f"{self._prefix}:{namespace}"], args=[ceiling or 0, limit, *pending]
            )
        except BaseException:
            self._pending = pending + self._pending  # not applied: send them with the next call
            raise
        fleet_rate = float(rate)
        self.rate = fleet_rate if fleet_rate >= 0 else None
        return int(gen), float(wait)

    def report(self, generation: int, accepted: bool) -> None:
        """Queue the outcome of a request booked in `generation` for the next round trip."""
        if not accepted:
            self.throttled += 1
        pending = self._pending
        pending += (generation, 1 if accepted else 2)
        if len(pending) > 2 * self.MAX_PENDING:
            del pending[: len(pending) - 2 * self.MAX_PENDING]
