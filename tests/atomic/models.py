"""A Django model for the Django worker of the atomic tests (app label ``atomic``).

Imported only by Django's app registry inside that worker process (see _django_worker.py).
"""

from __future__ import annotations

from django.db import models


class Charge(models.Model):
    key = models.TextField()
    cents = models.IntegerField()

    class Meta:
        app_label = "atomic"
        db_table = "ledger"  # the table the chaos checks read
