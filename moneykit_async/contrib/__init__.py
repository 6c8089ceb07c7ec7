"""Optional integrations, each behind an extra: redis (RedisTokenStore), arq (distributed checks),
aiohttp (web services; no extra), starlette, fastapi, otel (OpenTelemetry)."""
