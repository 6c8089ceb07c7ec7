"""The former home of the pytest plugin, kept for suites that name it (`-p moneykit_async.testing.pytest_plugin`,
`pytest_plugins = [...]`). The plugin is `moneykit_async_pytest`, which the `pytest11` entry point loads: it
stands outside this package so that starting pytest does not import the SDK (and aiohttp) in every project
where it is installed.
"""

from moneykit_async_pytest import (
    moneykit_env,
    moneykit_fake,
    moneykit_fake_options,
    moneykit_session,
    pytest_configure,
)

__all__ = ["moneykit_env", "moneykit_fake", "moneykit_fake_options", "moneykit_session", "pytest_configure"]
