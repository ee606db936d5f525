"""The Django app that owns retrysafe's record tables (created by its migration)."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["RetrySafeConfig"]


class RetrySafeConfig(AppConfig):  # type: ignore[misc]  # django ships no types
    name = "retrysafe.atomic.django"
    label = "retrysafe"
    verbose_name = "retrysafe idempotency records"
