"""Fake upstream providers for tests: real HTTP servers on loopback with scripted faults."""

from __future__ import annotations

from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Recorded, Reply

__all__ = ["FakeAnthropic", "FakeOpenAI", "Recorded", "Reply"]
