"""Turn the SDK's events into metrics: request counts by status, a latency histogram, retries, the
learned send rate and 429s, and session-wide pauses, printed in Prometheus' text format (use your
metrics library in real code).

    python examples/metrics.py       # runs a short workload against the sandbox, with a few faults
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter

from moneykit_async import (
    Event,
    MoneyKitSession,
    RateChanged,
    RateLimitPaused,
    RequestFinished,
    RetryPolicy,
    RetryScheduled,
    TokenRefreshed,
)
from moneykit_async.testing import FakeMoneyKit, Fault

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, float("inf"))


class Metrics:
    """A minimal registry; `on_event` is what you pass to MoneyKitSession."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.latency = [0] * len(BUCKETS)
        self.latency_sum = 0.0
        self.retries: Counter[str] = Counter()
        self.paused_seconds = 0.0
        self.send_rate: float | None = None
        self.throttled = 0
        self.token_refreshes = 0

    def on_event(self, event: Event) -> None:
        if isinstance(event, RequestFinished):
            self.requests[(event.path, str(event.status or event.error))] += 1
            self.latency[bisect.bisect_left(BUCKETS, event.elapsed)] += 1
            self.latency_sum += event.elapsed
        elif isinstance(event, RetryScheduled):
            self.retries[event.reason] += 1
        elif isinstance(event, RateLimitPaused):
            self.paused_seconds += event.delay
        elif isinstance(event, RateChanged):
            self.send_rate, self.throttled = event.rate, event.throttled
        elif isinstance(event, TokenRefreshed):
            self.token_refreshes += 1

    def exposition(self) -> str:
        lines = []
        for (path, status), n in sorted(self.requests.items()):
            lines.append(f'moneykit_requests_total{{path="{path}",status="{status}"}} {n}')
        cumulative = 0
        for bound, n in zip(BUCKETS, self.latency, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'moneykit_request_seconds_bucket{{le="{le}"}} {cumulative}')
        lines.append(f"moneykit_request_seconds_sum {self.latency_sum:.6f}")
        lines.append(f"moneykit_request_seconds_count {cumulative}")
        for reason, n in sorted(self.retries.items()):
            lines.append(f'moneykit_retries_total{{reason="{reason}"}} {n}')
        lines.append(f"moneykit_rate_limit_paused_seconds_total {self.paused_seconds:g}")
        lines.append(f"moneykit_throttled_total {self.throttled}")
        if self.send_rate is not None:
            lines.append(f"moneykit_send_rate {self.send_rate:.1f}")
        lines.append(f"moneykit_token_refreshes_total {self.token_refreshes}")
        return "\n".join(lines)


async def main() -> None:
    metrics = Metrics()
    async with FakeMoneyKit() as fake:
        fake.inject(
            "/auth/introspect",
            Fault(status=503, headers={"Retry-After": "0.1"}),  # overloaded: the session pauses
            Fault(status=429, headers={"Retry-After": "0.1"}),  # throttled: the send rate is cut
        )
        async with MoneyKitSession(
            base_url=fake.base_url,
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            on_event=metrics.on_event,
            retry=RetryPolicy(backoff_base=0.05),
        ) as mk:
            await mk.introspect()
            tokens = [fake.mint_token() for _ in range(50)] + ["unknown-token"]
            async for _ in mk.introspect_many(tokens, concurrency=8):
                pass
    print(metrics.exposition())


if __name__ == "__main__":
    asyncio.run(main())
