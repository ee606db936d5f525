"""A Hypothesis state machine per store kind, checked against a tiny model written here.

The model is deliberately independent of ``retrysafe._records`` (no ``claim_on``, no
``resolve``): it is a dict of id -> a few plain fields and the SPEC rules 7, 9, 10, 12-15
spelled out again in the simplest way, so an error in the shared record logic shows up as a
disagreement instead of being copied into the oracle.

Checked after every step: each result agrees with the model, a store's tokens for one id
strictly increase (across takeovers, expiries, releases and deletes), and a token that is not
the current holder's never succeeds. Leases and TTLs are half-integer tick counts,
retentions whole ones (a retention ends TTL + retention after completion), and the clock
moves by whole ticks, so no step lands exactly on a deadline (see ``kit.store_claims``).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kit.stores import ALL_KINDS, STORE_KINDS, Stalled, StoreKit, kit_fixture, rerun_when_stalled
from retrysafe._records import Claimed, Existing, Record, State, StoredResponse
from retrysafe.stores.cached import CachedStore

# Every store kind, and each behind the local replay cache.
kit = kit_fixture(ALL_KINDS)

IDS = ("a", "b")
FINGERPRINTS = ("fp-1", "fp-2")
# Short: a real clock pays every tick in sleep, and what a run proves is the events it reaches
# (a lapsed lease, a lapsed TTL, a tombstone's end), not their length. Two sizes of each, so
# one deadline can outlive another (a renewal that would shorten a lease). No lease or TTL is
# shorter than 1.5 ticks: on a real clock the steps between two advances take real time too,
# and a run of them must not carry an observation across a deadline set within it.
LEASES = (1.5, 2.5)  # ticks
TTLS = (1.5, 2.5)
# Whole ticks: retention ends at TTL + retention after completion, and a half-integer TTL
# plus a half-integer retention would land that deadline exactly on a tick (a flake).
RETENTIONS = (1, 2)
ADVANCES = (1, 2, 3)
RESPONSES = (
    StoredResponse(201, (("Content-Type", "application/json"),), b'{"ok": true}'),
    StoredResponse(204),
    StoredResponse(409, (("Link", "</x>"), ("Link", "</y>")), bytes(range(256)), trace_id="t1"),
    StoredResponse(200, (("Content-Type", "text/plain"),), b"stream", replayable=False),
)
BOGUS_TOKEN = 7
# Which token a complete/renew/release presents: 0 = the latest minted (often the holder's),
# 1 = a made-up one, n >= 2 = the n-th minted modulo their number (often a stale one).
PICKS = st.sampled_from((0, 0, 0, 0, 1, 2, 3))


@dataclass
class Model:
    """What the store should hold for one id. Times are ticks since the machine started."""

    fingerprint: str
    in_flight: bool
    token: int
    lease_until: float
    expires_at: float = 0.0
    retain_until: float = 0.0
    response: StoredResponse | None = None


@dataclass
class World:
    now: float = 0.0
    records: dict[str, Model] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)  # every token minted, per id

    def phase(self, id: str) -> str:
        """absent | in_flight | live (replays) | tombstone (expired, still remembered)."""
        m = self.records.get(id)
        if m is None:
            return "absent"
        if m.in_flight:
            return "in_flight"
        if self.now < m.expires_at:
            return "live"
        if self.now < m.retain_until:
            return "tombstone"
        return "absent"

    def holds(self, id: str, token: int) -> bool:
        m = self.records.get(id)
        return m is not None and m.in_flight and m.token == token


def _as_stored(response: StoredResponse) -> StoredResponse:
    """What a completion keeps (SPEC 15: an unreplayable result keeps status and trace only)."""
    if response.replayable:
        return response
    return StoredResponse(response.status, (), b"", False, response.trace_id, response.span_id)


def _machine(kit: StoreKit, seen: Counter[str]) -> type[RuleBasedStateMachine]:
    """The machine for ``kit``; ``seen`` counts which situations the run reached."""
    store = kit.store
    # A real clock keeps running while the machine works, and every step lands half a tick from
    # any deadline: twice the kit's tick gives a loaded machine twice the room (see advance).
    tick = 2 * kit.tick if kit.real_clock else kit.tick
    # On a real clock model time ``now`` stands for the real instant ``started + now * tick``,
    # and a step agrees with the model only if its store calls ran in the half tick after it:
    # every deadline is a half-integer number of ticks from whole-tick model times, so a call
    # made in [now, now + 0.5) sees every deadline on the side the model says (see
    # ``kit.store_claims``; ``advance`` never ends early, so no call runs before ``now``). A
    # call that returns later (a loaded machine stalled the run) voids the rest of its
    # example: nothing more of it is checked, and the store is left to the next example's
    # fresh ids.
    late = 0.5 * tick

    class StoreMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.world = World()
            # Fresh ids per example: the store (and its clock) is shared by all examples.
            self.prefix = f"model-{uuid.uuid4().hex}-"
            self.started = time.monotonic()  # model time 0, for a real clock (see advance)
            self.void = False  # a call ran too late on a real clock: see ``late`` above
            seen["examples"] += 1

        def _in_time(self) -> bool:
            """Whether the store calls of this step so far ran inside the model's instant (a
            real clock's ``late`` margin); voids the example if not."""
            overran = time.monotonic() - (self.started + self.world.now * tick) >= late
            if kit.real_clock and not self.void and overran:
                self.void = True
                seen["void"] += 1
            return not self.void

        def _token(self, id: str, pick: int) -> int:
            minted = self.world.tokens.get(id, [])
            if pick == 0 or not minted:  # the current (or latest) token, else a made-up one
                return minted[-1] if minted else BOGUS_TOKEN
            if pick == 1:
                return BOGUS_TOKEN
            return minted[pick % len(minted)]  # often a stale one

        def _fenced(self, name: str, id: str, token: int, ok: bool) -> None:
            expected = self.world.holds(id, token)
            seen[f"{name}:{'holder' if expected else 'refused'}"] += 1
            if not expected:
                assert ok is False, f"{name} with a token that does not hold {id!r} succeeded"
            assert ok is expected, f"{name}({id!r}, {token}) returned {ok}, model says {expected}"

        @rule(
            id=st.sampled_from(IDS), fp=st.sampled_from(FINGERPRINTS), lease=st.sampled_from(LEASES)
        )
        def claim(self, id: str, fp: str, lease: float) -> None:
            if self.void:
                return
            w = self.world
            phase = w.phase(id)
            old = w.records.get(id)
            lapsed = phase == "in_flight" and old is not None and w.now >= old.lease_until
            other = ":other-request" if old is not None and old.fingerprint != fp else ""
            seen[f"claim:{phase}{':lapsed' if lapsed else ''}{other if lapsed else ''}"] += 1
            result = store.claim(self.prefix + id, fp, lease * tick)
            if not self._in_time():
                return
            # A live record answers; a lapsed lease is taken over only by the same request
            # (SPEC 9: another request under the key is a mismatch, even if the holder died).
            held = (
                phase == "in_flight"
                and old is not None
                and (w.now < old.lease_until or old.fingerprint != fp)
            )
            if phase == "live" or held:
                assert old is not None
                assert isinstance(result, Existing), f"{phase} {id!r} should be Existing: {result}"
                self._agrees(id, result.record)
                return
            assert isinstance(result, Claimed), f"{phase} {id!r} should be claimable: {result}"
            recovered = phase == "in_flight"
            expired = phase == "tombstone"
            assert (result.recovered, result.expired_before) == (recovered, expired)
            previous = old.fingerprint if (old is not None and (recovered or expired)) else None
            assert result.previous_fingerprint == previous
            minted = w.tokens.setdefault(id, [])
            assert not minted or result.token > max(minted), "tokens must strictly increase"
            minted.append(result.token)
            w.records[id] = Model(fp, True, result.token, w.now + lease)

        @rule(
            id=st.sampled_from(IDS),
            pick=PICKS,
            response=st.sampled_from(RESPONSES),
            ttl=st.sampled_from(TTLS),
            retention=st.sampled_from(RETENTIONS),
        )
        def complete(
            self, id: str, pick: int, response: StoredResponse, ttl: float, retention: float
        ) -> None:
            if self.void:
                return
            token = self._token(id, pick)
            ok = store.complete(self.prefix + id, token, response, ttl * tick, retention * tick)
            if not self._in_time():
                return
            self._fenced("complete", id, token, ok)
            if ok:
                m = self.world.records[id]
                m.in_flight = False
                m.expires_at = self.world.now + ttl
                m.retain_until = self.world.now + ttl + retention
                m.response = _as_stored(response)

        @rule(
            id=st.sampled_from(IDS),
            fp=st.sampled_from(FINGERPRINTS),
            response=st.sampled_from(RESPONSES),
            ttl=st.sampled_from(TTLS),
        )
        def run_to_completion(self, id: str, fp: str, response: StoredResponse, ttl: float) -> None:
            # The common life of a request in one step (claim, then complete with the token it
            # got), so runs reach completed records and their tombstones often.
            self.claim(id, fp, LEASES[0])
            self.complete(id, 0, response, ttl, RETENTIONS[-1])

        @rule(id=st.sampled_from(IDS), same_request=st.booleans())
        def holder_dies(self, id: str, same_request: bool) -> None:
            # A holder crashes mid-request and a retry of it (or another request under the
            # key) comes after its lease lapsed. Random runs reach that three-step sequence
            # (claim, a long enough advance, another claim before anything else touches the id)
            # rarely: one CI run never saw another request meet a lapsed lease.
            self.claim(id, FINGERPRINTS[0], LEASES[0])
            self.advance(2)  # the shortest whole advance past LEASES[0]
            self.claim(id, FINGERPRINTS[0 if same_request else 1], LEASES[0])

        @rule(id=st.sampled_from(IDS), pick=PICKS, lease=st.sampled_from(LEASES))
        def renew(self, id: str, pick: int, lease: float) -> None:
            if self.void:
                return
            token = self._token(id, pick)
            ok = store.renew(self.prefix + id, token, lease * tick)
            if not self._in_time():
                return
            self._fenced("renew", id, token, ok)
            if ok:
                m = self.world.records[id]
                m.lease_until = max(m.lease_until, self.world.now + lease)

        @rule(id=st.sampled_from(IDS), pick=PICKS)
        def release(self, id: str, pick: int) -> None:
            if self.void:
                return
            token = self._token(id, pick)
            ok = store.release(self.prefix + id, token)
            if not self._in_time():
                return
            self._fenced("release", id, token, ok)
            if ok:
                del self.world.records[id]

        def _in_flight_ids(self) -> list[str]:
            return [id for id in IDS if self.world.phase(id) == "in_flight"]

        @precondition(lambda self: bool(self._in_flight_ids()))
        @rule(
            which=st.integers(0, len(IDS) - 1),
            op=st.sampled_from(("complete", "renew", "release")),
            pick=st.integers(0, 7),
        )
        def write_with_a_token_that_does_not_hold(self, which: int, op: str, pick: int) -> None:
            # Fencing gets its own rule, aimed at records in flight (where a wrong token could do
            # harm): a stale holder's token (taken over, released, expired, deleted) or a
            # made-up one. The pick-based rules above cover every other state.
            if self.void:
                return
            candidates = self._in_flight_ids()
            id = candidates[which % len(candidates)]
            holder = self.world.records[id].token
            others = [t for t in self.world.tokens.get(id, []) if t != holder] + [BOGUS_TOKEN]
            token = others[pick % len(others)]
            before = store.get(self.prefix + id)
            if op == "complete":
                ok = store.complete(
                    self.prefix + id, token, RESPONSES[0], TTLS[0] * tick, RETENTIONS[0] * tick
                )
            elif op == "renew":
                ok = store.renew(self.prefix + id, token, LEASES[-1] * tick)
            else:
                ok = store.release(self.prefix + id, token)
            after = store.get(self.prefix + id)
            if not self._in_time():
                return
            assert ok is False, f"{op} with a token that does not hold {id!r} succeeded"
            assert after == before, f"a refused {op} changed {id!r}"
            seen[f"fenced-{op}:{self.world.phase(id)}"] += 1

        @rule(id=st.sampled_from(IDS))
        def delete(self, id: str) -> None:
            if self.void:
                return
            found = store.delete(self.prefix + id)
            if not self._in_time():
                return
            seen[f"delete:{self.world.phase(id)}"] += 1
            assert found is (self.world.phase(id) != "absent")
            self.world.records.pop(id, None)

        def _a_deadline_is_ahead(self) -> bool:
            """Whether moving the clock can change anything: a lease, a TTL or a retention
            still to come. An advance that cannot proves nothing, and a real clock pays it."""
            w = self.world
            for id in IDS:
                m, phase = w.records.get(id), w.phase(id)
                if phase in ("live", "tombstone"):
                    return True
                if phase == "in_flight" and m is not None and w.now < m.lease_until:
                    return True
            return False

        @precondition(lambda self: self._a_deadline_is_ahead())
        @rule(ticks=st.sampled_from(ADVANCES))
        def advance(self, ticks: int) -> None:
            if self.void:
                return  # nothing more is checked: no need to wait
            self.world.now += ticks
            if kit.real_clock:
                # Sleep until model time and real time agree again: the time the operations
                # took must not add up over a run and carry a step across a deadline.
                kit.advance(max(0.0, self.started + self.world.now * tick - time.monotonic()))
            else:
                kit.advance(ticks * tick)

        @invariant()
        def rebase_the_real_clock(self) -> None:
            # With no deadline ahead nothing depends on how model time maps to real time: map
            # "now" to this instant, so the time the steps took since the last advance stops
            # adding up (a later deadline is set, and observed, from here).
            if kit.real_clock and not self.void and not self._a_deadline_is_ahead():
                self.started = time.monotonic() - self.world.now * tick

        @invariant()
        def every_record_agrees(self) -> None:
            if self.void:
                return
            records = {id: store.get(self.prefix + id) for id in IDS}
            if self._in_time():
                for id, record in records.items():
                    self._agrees(id, record)

        def _agrees(self, id: str, record: Record | None) -> None:
            phase = self.world.phase(id)
            m = self.world.records.get(id)
            if phase == "absent" or m is None:
                assert record is None, f"{id!r} should be absent, store has {record}"
                return
            assert record is not None, f"{id!r} is {phase} in the model, absent in the store"
            assert (record.id, record.fingerprint, record.token) == (
                self.prefix + id,
                m.fingerprint,
                m.token,
            )
            if phase == "in_flight":
                assert record.state is State.IN_FLIGHT
                assert record.response is None
            elif phase == "live":
                want = State.COMPLETED if m.response.replayable else State.UNREPLAYABLE  # type: ignore[union-attr]
                assert record.state is want
                assert record.response == m.response
            else:  # tombstone: remembered (fingerprint, token), without the response (SPEC 14)
                assert record.state is State.TOMBSTONE
                assert record.response is None

    return StoreMachine


# Situations a run must reach, or it proved little (a guard against a vacuous pass).
MUST_SEE = (
    "claim:absent",
    "claim:in_flight",
    "claim:in_flight:lapsed",
    "claim:in_flight:lapsed:other-request",
    "claim:live",
    "claim:tombstone",
    "complete:holder",
    "complete:refused",
    "renew:holder",
    "renew:refused",
    "release:holder",
    "release:refused",
    "delete:in_flight",
    "delete:live",
    "delete:tombstone",
    "fenced-complete:in_flight",
    "fenced-renew:in_flight",
    "fenced-release:in_flight",
)


def _settings(examples: int, steps: int, derandomize: bool = False) -> settings:
    return settings(
        report_multiple_bugs=False,  # one plain AssertionError, the smallest failing run
        derandomize=derandomize,
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,  # the store is rebuilt per test; stored examples would not replay
    )


@rerun_when_stalled
def test_store_agrees_with_the_reference_model(kit: StoreKit) -> None:
    # Real-clock kits pay real time for every advance: fewer, shorter runs.
    examples, steps = (12, 20) if kit.real_clock else (200, 50)
    seen: Counter[str] = Counter()
    # The same fixed sample every run. Hypothesis switches rules off per example, so a random
    # run may by chance never reach a situation in MUST_SEE (random runs here have met a
    # tombstone delete once in 10,000 steps) or never replay from the cache: the guards below
    # must not flake. The fixed sample reaches every situation in MUST_SEE at least 25 times
    # (memory, 200 x 50).
    chosen = _settings(examples, steps, derandomize=True)
    run_state_machine_as_test(_machine(kit, seen), settings=chosen)
    # A real clock may void an example that stalled (``late`` in _machine): the examples that
    # ran to their end must be the most of them, or the run checked too little to pass on.
    if seen["void"] * 2 > seen["examples"]:
        raise Stalled(f"{seen['void']} of {seen['examples']} examples stalled past half a tick")
    missing = [name for name in MUST_SEE if not seen[name]]
    if not kit.real_clock:
        assert not missing, f"the run never reached {missing}: {dict(seen)}"
    if isinstance(kit.store, CachedStore):  # the cache really answered some claims
        assert kit.store.cache.hits > 0, f"no claim was answered from the cache: {dict(seen)}"


@pytest.mark.parametrize("broken", ["reuses-tokens", "ignores-tokens"])
def test_the_model_notices_a_broken_store(tmp_path: Path, broken: str) -> None:
    """The oracle is not vacuous: a store that breaks fencing must be caught."""
    kit = STORE_KINDS["memory"](tmp_path)
    real = kit.store

    class Broken:
        url = real.url

        def claim(self, id: str, fp: str, lease: float) -> object:
            result = real.claim(id, fp, lease)
            if broken == "reuses-tokens" and isinstance(result, Claimed):
                return Claimed(
                    1, result.expired_before, result.recovered, result.previous_fingerprint
                )
            return result

        def complete(self, id: str, token: int, *args: object) -> bool:
            if broken == "ignores-tokens":
                record = real.get(id)
                if record is not None and record.state is State.IN_FLIGHT:
                    token = record.token
            return real.complete(id, token, *args)  # type: ignore[arg-type]

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    kit.store = Broken()  # type: ignore[assignment]
    with pytest.raises(AssertionError):
        run_state_machine_as_test(_machine(kit, Counter()), settings=_settings(200, 20))
