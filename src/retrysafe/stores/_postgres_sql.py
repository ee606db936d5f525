"""The SQL of the PostgreSQL store: one statement per operation, timed by the server's clock.

Each statement implements a pure function of ``_records.py`` (claim_on, renew_on, complete_on,
release_allowed, resolve, next_token) in one autocommit statement: one round trip, atomic, no
check-then-set. Times are integer microseconds of ``clock_timestamp()`` (SPEC 14).

Columns beyond the Record's: ``origin`` and ``prev_fingerprint`` say how the current claim
came about (``new`` / ``recovered`` / ``expired``; an upsert cannot return the row it
replaced, so it writes what the caller needs to know into the new one); ``waiters`` marks a
record some duplicate waits on, so completion and release ``pg_notify`` only then (SPEC 10).
The tombstone (SPEC 14) is a completed row past ``expires_at``: :func:`purge_statements`
strips its body and later deletes it, each through an index, never scanning the table.
"""

from __future__ import annotations

import hashlib

from psycopg import sql

# An abandoned claim is purged this long after its lease lapsed (as in MemoryStore).
ABANDONED_GRACE = 3600.0

NOW = sql.SQL("(extract(epoch FROM clock_timestamp()) * 1000000)::bigint")

COLUMNS = (
    "id",
    "fingerprint",
    "state",
    "token",
    "lease_until",
    "expires_at",
    "retain_until",
    "created_at",
    "status",
    "headers",
    "body",
    "replayable",
    "trace_id",
    "span_id",
)


def micros(seconds: float) -> int:
    """``seconds`` as the integer microseconds the statements take and the columns hold."""
    return round(seconds * 1_000_000)


class Statements:
    """Every statement of the store, rendered once for one table name."""

    def __init__(self, schema: str | None, prefix: str) -> None:
        self.schema, self.prefix = schema, prefix
        self.table_name = f"{prefix}records"
        self.phases_name = f"{prefix}records_phases"
        table = (
            sql.Identifier(schema, self.table_name) if schema else sql.Identifier(self.table_name)
        )
        phases = (
            sql.Identifier(schema, self.phases_name) if schema else sql.Identifier(self.phases_name)
        )
        cols = sql.SQL(", ").join(sql.Identifier("r", c) for c in COLUMNS)
        fmt = {"t": table, "p": phases, "now": NOW, "cols": cols}

        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(**fmt)

        def hot(text: str) -> bytes:
            # A statement of the request path, rendered to bytes once: psycopg renders a
            # Composed again on every execute (16 as_bytes calls, 15 % of a PostgreSQL replay's
            # CPU), and caches the parse of a bytes query. Rendered without a connection:
            # identifiers in double quotes, doubled inside (psycopg >= 3.2), UTF-8 text.
            return q(text).as_bytes(None)

        create = [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            if schema
            else None,
            q(
                """CREATE TABLE IF NOT EXISTS {t} (
                    id               text PRIMARY KEY,
                    fingerprint      text NOT NULL,
                    state            text NOT NULL,
                    token            bigint NOT NULL,
                    lease_until      bigint NOT NULL,
                    expires_at       bigint NOT NULL DEFAULT 0,
                    retain_until     bigint NOT NULL,
                    created_at       bigint NOT NULL,
                    status           integer,
                    headers          text,
                    body             bytea,
                    replayable       boolean,
                    trace_id         text,
                    span_id          text,
                    origin           text NOT NULL DEFAULT 'new',
                    prev_fingerprint text,
                    waiters          boolean NOT NULL DEFAULT false
                )"""
            ),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (retain_until)").format(
                sql.Identifier(f"{self.table_name}_retain"), table
            ),
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {} ON {} (expires_at) WHERE body IS NOT NULL"
            ).format(sql.Identifier(f"{self.table_name}_body"), table),
            # Recovery points of atomic handlers (SPEC 13a): they outlive the claim that wrote
            # them (a release or takeover must resume, not redo), so they are rows of their own,
            # dropped when the record completes or their retention lapses.
            q(
                """CREATE TABLE IF NOT EXISTS {p} (
                    id           text PRIMARY KEY,
                    fingerprint  text NOT NULL,
                    phases       text NOT NULL,
                    retain_until bigint NOT NULL
                )"""
            ),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (retain_until)").format(
                sql.Identifier(f"{self.phases_name}_retain"), phases
            ),
        ]
        self.create = [s for s in create if s is not None]
        # Held (pg_advisory_xact_lock) while creating: concurrent CREATE ... IF NOT EXISTS of
        # one table can still collide. The store and the Django migration take the same one.
        digest = hashlib.sha256(f"retrysafe-schema:{self.table_name}".encode()).digest()
        self.lock_id = int.from_bytes(digest[:8], "big", signed=True)
        self.drop = q("DROP TABLE IF EXISTS {t}, {p}")

        # -> one row: claimed token | NULL, origin, prev_fingerprint, now, the replaced record's
        # token, created_at and end (lease_until or expires_at: telemetry, as this statement's
        # snapshot read it), the live record (when not claimed). A claimed token and no record
        # is impossible; neither means a concurrent writer changed the row after this
        # statement's snapshot: run it again.
        #
        # ``cur`` reads the row without a lock. When it is live (a replay, a duplicate in
        # flight, a mismatch) the INSERT has no source row, so the statement stays read-only:
        # no row lock, no transaction id, no WAL flush — a replay is a plain index read.
        self.claim = hot(
            """
            WITH now AS MATERIALIZED (SELECT {now} AS t),
            cur AS MATERIALIZED (SELECT * FROM {t} WHERE id = %(id)s),
            live AS MATERIALIZED (
              SELECT 1 FROM cur, now
              WHERE CASE WHEN cur.state = 'in_flight'
                         THEN cur.lease_until > now.t OR cur.fingerprint <> %(fp)s
                         ELSE cur.expires_at > now.t END
            ),
            up AS (
              INSERT INTO {t} AS r (id, fingerprint, state, token, lease_until, expires_at,
                                    retain_until, created_at, origin)
              SELECT %(id)s, %(fp)s, 'in_flight', now.t, now.t + %(lease)s, 0,
                     now.t + %(lease)s + %(grace)s, now.t, 'new'
              FROM now WHERE NOT EXISTS (SELECT 1 FROM live)
              ON CONFLICT (id) DO UPDATE SET
                fingerprint = excluded.fingerprint, state = 'in_flight',
                token = greatest(r.token + 1, excluded.token),
                lease_until = excluded.lease_until, expires_at = 0,
                retain_until = excluded.retain_until, created_at = excluded.created_at,
                status = NULL, headers = NULL, body = NULL, replayable = NULL,
                trace_id = NULL, span_id = NULL, waiters = false,
                origin = CASE WHEN r.retain_until <= excluded.created_at THEN 'new'
                              WHEN r.state = 'in_flight' THEN 'recovered'
                              ELSE 'expired' END,
                prev_fingerprint = CASE WHEN r.retain_until <= excluded.created_at THEN NULL
                                        ELSE r.fingerprint END
              -- only a retry of the same request takes over a lapsed lease (SPEC 9)
              WHERE CASE WHEN r.state = 'in_flight'
                         THEN r.lease_until <= excluded.created_at
                              AND r.fingerprint = excluded.fingerprint
                         ELSE r.expires_at <= excluded.created_at END
              RETURNING r.token, r.origin, r.prev_fingerprint
            )
            SELECT up.token, up.origin, up.prev_fingerprint, now.t,
                   w.token, w.created_at,
                   CASE WHEN w.state = 'in_flight' THEN w.lease_until ELSE w.expires_at END,
                   {cols}
            FROM now
            LEFT JOIN up ON true
            LEFT JOIN cur r ON up.token IS NULL
            LEFT JOIN cur w ON up.origin IN ('expired', 'recovered')
            """
        )
        self.renew = hot(
            """
            WITH now AS MATERIALIZED (SELECT {now} AS t)
            UPDATE {t} SET lease_until = greatest(lease_until, now.t + %(lease)s),
                           retain_until = greatest(lease_until, now.t + %(lease)s) + %(grace)s
            FROM now
            WHERE id = %(id)s AND token = %(token)s AND state = 'in_flight'
            RETURNING true
            """
        )
        # Completion is this one statement, so it can also run on a caller's connection
        # inside the caller's transaction (SPEC 13a: atomic completion).
        self.complete = hot(
            """
            WITH now AS MATERIALIZED (SELECT {now} AS t),
            u AS (
              UPDATE {t} SET state = %(state)s, expires_at = now.t + %(ttl)s,
                             retain_until = now.t + %(ttl)s + %(retention)s,
                             status = %(status)s, headers = %(headers)s, body = %(body)s,
                             replayable = %(replayable)s, trace_id = %(trace_id)s,
                             span_id = %(span_id)s
              FROM now
              WHERE id = %(id)s AND token = %(token)s AND state = 'in_flight'
              RETURNING id, waiters
            )
            SELECT u.id, CASE WHEN u.waiters THEN pg_notify(%(channel)s, u.id) END FROM u
            """
        )
        self.release = hot(
            """
            WITH d AS (
              DELETE FROM {t}
              WHERE id = %(id)s AND token = %(token)s AND state = 'in_flight'
              RETURNING id, waiters
            )
            SELECT d.id, CASE WHEN d.waiters THEN pg_notify(%(channel)s, d.id) END FROM d
            """
        )
        # -> whether get would have returned the row (one past its retention that the purge
        # has not reached yet is already gone to callers); no row if there was none at all.
        self.delete = hot(
            """
            WITH now AS MATERIALIZED (SELECT {now} AS t),
            d AS (DELETE FROM {t} WHERE id = %(id)s RETURNING id, waiters, state, retain_until),
            p AS (DELETE FROM {p} WHERE id = %(id)s)
            SELECT d.state = 'in_flight' OR d.retain_until > now.t,
                   CASE WHEN d.waiters THEN pg_notify(%(channel)s, d.id) END
            FROM d, now
            """
        )
        self.get = hot(
            """
            WITH now AS MATERIALIZED (SELECT {now} AS t)
            SELECT NULL, NULL, NULL, now.t, {cols}, p.phases
            FROM now LEFT JOIN {t} r ON r.id = %(id)s
            LEFT JOIN {p} p ON p.id = r.id AND p.fingerprint = r.fingerprint
            """
        )
        # Mark the record watched; -> microseconds left on its lease, no row if not in flight.
        self.watch = hot(
            """
            WITH now AS MATERIALIZED (SELECT {now} AS t)
            UPDATE {t} SET waiters = true FROM now
            WHERE id = %(id)s AND state = 'in_flight'
            RETURNING lease_until - now.t
            """
        )
        # Index-friendly purge, in batches: strip bodies past their TTL (partial index on
        # expires_at), delete rows past their retention (index on retain_until).
        # now() (stable, the statement's start in autocommit) rather than clock_timestamp()
        # (volatile): only a stable bound can be an index condition.
        self.purge_bodies = q(
            """
            UPDATE {t} SET body = NULL, headers = NULL
            WHERE id = ANY(ARRAY(
              SELECT id FROM {t}
              WHERE body IS NOT NULL
                AND expires_at <= (extract(epoch FROM now()) * 1000000)::bigint
              LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
            """
        )
        # Records per state for `retrysafe keys stats` (admin only: a scan of the table).
        self.stats = q(
            """
            WITH now AS MATERIALIZED (SELECT {now} AS t)
            SELECT CASE WHEN r.state IN ('completed', 'unreplayable') AND r.expires_at <= now.t
                        THEN 'tombstone' ELSE r.state END AS s, count(*)
            FROM {t} r, now WHERE r.retain_until > now.t GROUP BY s
            """
        )
        self.purge_rows = q(
            """
            DELETE FROM {t}
            WHERE id = ANY(ARRAY(
              SELECT id FROM {t}
              WHERE retain_until <= (extract(epoch FROM now()) * 1000000)::bigint
              LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
            """
        )
        self.purge_phases = q(
            """
            DELETE FROM {p}
            WHERE id = ANY(ARRAY(
              SELECT id FROM {p}
              WHERE retain_until <= (extract(epoch FROM now()) * 1000000)::bigint
              LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
            """
        )

        # -- atomic units (SPEC 13a, stores/_postgres_atomic.py) --
        # Re-check the fencing token inside the unit's transaction and lock the record row:
        # a takeover (the claim's upsert) now waits for our COMMIT or ROLLBACK, so the token
        # checked here still holds when the completion commits.
        self.hold = hot(
            """
            SELECT token = %(token)s AND state = 'in_flight' FROM {t}
            WHERE id = %(id)s FOR UPDATE
            """
        )
        self.phases_read = hot("SELECT phases FROM {p} WHERE id = %(id)s AND fingerprint = %(fp)s")
        self.phases_write = hot(
            """
            WITH now AS MATERIALIZED (SELECT {now} AS t)
            INSERT INTO {p} (id, fingerprint, phases, retain_until)
            SELECT %(id)s, %(fp)s, %(phases)s, now.t + %(keep)s FROM now
            ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint,
              phases = excluded.phases, retain_until = excluded.retain_until
            """
        )
        self.phases_drop = hot("DELETE FROM {p} WHERE id = %(id)s")
