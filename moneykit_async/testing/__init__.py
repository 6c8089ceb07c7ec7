"""Test helpers: an in-process MoneyKit (`FakeMoneyKit`) for your tests and for offline use."""

from ._fake import DEFAULT_SCOPE, FakeClient, FakeMoneyKit, Fault, RecordedRequest, error_body

__all__ = ["DEFAULT_SCOPE", "FakeClient", "FakeMoneyKit", "Fault", "RecordedRequest", "error_body"]
