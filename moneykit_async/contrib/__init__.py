"""Optional integrations, each behind an extra: `redis` (RedisTokenStore), `arq` (distributed checks)."""
