"""The Django app that owns onceonly's record tables (created by its migration)."""

from __future__ import annotations

from django.apps import AppConfig


class OnceOnlyConfig(AppConfig):  # type: ignore[misc]  # django ships no types
    name = "onceonly.atomic.django"
    label = "onceonly"
    verbose_name = "onceonly idempotency records"
