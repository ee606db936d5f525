"""A Django model for the Django worker of the atomic tests (app label ``atomic_django_app``).

Imported only by Django's app registry inside that worker process (see atomic_django_child.py).
"""

from __future__ import annotations

from django.db import models


class Charge(models.Model):
    key = models.TextField()
    cents = models.IntegerField()

    class Meta:
        app_label = "atomic_django_app"
        db_table = "ledger"  # the table the chaos checks read
