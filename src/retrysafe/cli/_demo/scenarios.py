"""The demo's scenarios: each fires requests at the payments API and checks what happened.

Every scenario uses its own customer, so the app's ledger shows per scenario how often the
handler ran and how many charges it made. A scenario never trusts retrysafe's word for it:
"ran" comes from the app's own counter, "charged" from the app's own ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from retrysafe._keys import new_key
from retrysafe._problems import problem_slug
from retrysafe.cli._demo.app import Ledger
from retrysafe.testing import RecordingStore

REPLAYED = "idempotent-replayed"
PROBLEM_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class Check:
    """One expectation and whether it held."""

    what: str
    ok: bool


@dataclass
class ScenarioResult:
    """What one scenario did and saw. ``ran`` counts real handler executions (the app's)."""

    name: str
    did: str
    ran: int = 0
    replayed: int = 0
    refused: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # store claim results
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def expect(self, what: str, ok: bool) -> None:
        self.checks.append(Check(what, ok))


@dataclass
class Context:
    client: httpx.AsyncClient
    ledger: Ledger
    store: RecordingStore
    hold_ttl: float


Scenario = Callable[[Context], Awaitable[ScenarioResult]]


def _replayed(response: httpx.Response) -> bool:
    return bool(response.headers.get(REPLAYED) == "true")


def _problem_type(response: httpx.Response) -> str:
    if not response.headers.get("content-type", "").startswith(PROBLEM_TYPE):
        return ""
    body: dict[str, Any] = response.json()
    return problem_slug(str(body.get("type", "")))


async def _post(
    ctx: Context, path: str, order: dict[str, Any], key: str | None, timeout: float = 5.0
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await ctx.client.post(path, json=order, headers=headers, timeout=timeout)


async def lost_response(ctx: Context) -> ScenarioResult:
    """The charge succeeds but its response never reaches the client, which retries."""
    result = ScenarioResult(
        "Lost response, retried",
        "charge; client times out after 0.1 s (handler takes 0.4 s); retry with the same key",
    )
    key, order = new_key(), {"customer": "alice", "amount": 1999, "delay_ms": 400}
    try:
        await _post(ctx, "/charges", order, key, timeout=0.1)
        result.expect("the first response is lost (client timeout)", False)
    except httpx.TimeoutException:
        result.expect("the first response is lost (client timeout)", True)
    retry = await _post(ctx, "/charges", order, key)
    result.replayed = int(_replayed(retry))
    charges = ctx.ledger.charges_of("alice")
    result.expect("the retry gets 201 Created", retry.status_code == 201)
    result.expect("the retry is a replay (Idempotent-Replayed: true)", _replayed(retry))
    result.expect("alice is charged once", len(charges) == 1)
    result.expect(
        "the replay names the charge that was made",
        len(charges) == 1 and retry.json().get("id") == charges[0].id,
    )
    result.ran = ctx.ledger.runs["charges", "alice"]
    return result


async def concurrent_duplicates(ctx: Context, n: int = 20) -> ScenarioResult:
    """A client (or n clients) fire the same charge n times at once."""
    result = ScenarioResult(f"{n} concurrent duplicates", f"{n} identical charges at once")
    key, order = new_key(), {"customer": "bob", "amount": 4200, "delay_ms": 100}
    responses = await asyncio.gather(*(_post(ctx, "/charges", order, key) for _ in range(n)))
    result.replayed = sum(_replayed(r) for r in responses)
    charges = ctx.ledger.charges_of("bob")
    result.expect(f"all {n} get 201 Created", all(r.status_code == 201 for r in responses))
    result.expect(f"{n - 1} are replays of the one execution", result.replayed == n - 1)
    result.expect("all carry the same charge", len({r.content for r in responses}) == 1)
    result.expect("bob is charged once", len(charges) == 1)
    result.ran = ctx.ledger.runs["charges", "bob"]
    return result


async def mismatched_reuse(ctx: Context) -> ScenarioResult:
    """A buggy client reuses a key for a different amount."""
    result = ScenarioResult(
        "Key reused, different amount",
        "charge 5.00; same key with 50.00; the first request again",
    )
    key = new_key()
    first = await _post(ctx, "/charges", {"customer": "carol", "amount": 500}, key)
    reused = await _post(ctx, "/charges", {"customer": "carol", "amount": 5000}, key)
    again = await _post(ctx, "/charges", {"customer": "carol", "amount": 500}, key)
    if reused.status_code >= 400:
        result.refused.append(f"{reused.status_code} {_problem_type(reused)}")
    result.replayed = int(_replayed(again))
    charges = ctx.ledger.charges_of("carol")
    result.expect("the first charge gets 201", first.status_code == 201)
    result.expect("the reuse is refused with 422", reused.status_code == 422)
    result.expect("the refusal is a key-mismatch problem", _problem_type(reused) == "key-mismatch")
    result.expect("the original still replays", again.status_code == 201 and _replayed(again))
    result.expect(
        "carol is charged once, 5.00",
        [c.amount for c in charges] == [500],
    )
    result.ran = ctx.ledger.runs["charges", "carol"]
    return result


async def missing_key(ctx: Context) -> ScenarioResult:
    """A client forgets the key on an endpoint that requires one."""
    result = ScenarioResult("No key on /charges", "charge without an Idempotency-Key header")
    response = await _post(ctx, "/charges", {"customer": "dave", "amount": 300}, None)
    if response.status_code >= 400:
        result.refused.append(f"{response.status_code} {_problem_type(response)}")
    result.expect("refused with 400", response.status_code == 400)
    result.expect("the refusal is a missing-key problem", _problem_type(response) == "missing-key")
    result.expect("dave is not charged", not ctx.ledger.charges_of("dave"))
    result.ran = ctx.ledger.runs["charges", "dave"]
    result.expect("the handler did not run", result.ran == 0)
    return result


async def flaky_upstream(ctx: Context) -> ScenarioResult:
    """The card network fails once (502): the key is released and the retry really runs."""
    result = ScenarioResult(
        "Flaky upstream (5xx)", "charge fails with 502; retry with the same key"
    )
    key, order = new_key(), {"customer": "erin", "amount": 800, "fail_first": 1}
    failed = await _post(ctx, "/charges", order, key)
    retry = await _post(ctx, "/charges", order, key)
    result.replayed = int(_replayed(retry))
    result.expect("the first attempt gets 502", failed.status_code == 502)
    result.expect("the retry runs again and gets 201", retry.status_code == 201)
    result.expect("the retry is not a replay of the 502", not _replayed(retry))
    result.expect("the failed attempt was released", ctx.store.tally.calls["release"] == 1)
    result.expect("erin is charged once", len(ctx.ledger.charges_of("erin")) == 1)
    result.ran = ctx.ledger.runs["charges", "erin"]
    return result


async def expired_key(ctx: Context) -> ScenarioResult:
    """A key used again after its record's TTL (a short-TTL policy on /holds)."""
    result = ScenarioResult(
        "Expired key (/holds)",
        f"hold; duplicate; wait {ctx.hold_ttl + 0.1:.1f} s (TTL {ctx.hold_ttl:g} s); again",
    )
    key, order = new_key(), {"customer": "frank", "amount": 100}
    first = await _post(ctx, "/holds", order, key)
    duplicate = await _post(ctx, "/holds", order, key)
    # Real time must pass: expiry is judged by the store's clock (SPEC 14).
    await asyncio.sleep(ctx.hold_ttl + 0.1)
    later = await _post(ctx, "/holds", order, key)
    result.replayed = int(_replayed(duplicate)) + int(_replayed(later))
    result.expect("the first hold gets 201", first.status_code == 201)
    result.expect("the duplicate within the TTL replays", _replayed(duplicate))
    result.expect("after the TTL the hold runs again", later.status_code == 201)
    result.expect("…and is no replay", not _replayed(later))
    result.expect(
        "…with outcome expired (not a first request)", ctx.store.tally.claims["expired"] == 1
    )
    result.ran = ctx.ledger.runs["holds", "frank"]
    result.expect("the hold handler ran twice", result.ran == 2)
    return result


SCENARIOS: tuple[Scenario, ...] = (
    lost_response,
    concurrent_duplicates,
    mismatched_reuse,
    missing_key,
    flaky_upstream,
    expired_key,
)


async def run_scenario(scenario: Scenario, ctx: Context) -> ScenarioResult:
    """Run one scenario; its store outcomes are the claims the store answered meanwhile."""
    ctx.store.reset()
    result = await scenario(ctx)
    claims = ctx.store.tally.claims
    result.outcomes = {
        name: claims[name] for name in ("executed", "expired", "recovered") if claims[name]
    }
    if result.replayed:
        result.outcomes["replayed"] = result.replayed
    if released := ctx.store.tally.calls["release"]:
        result.outcomes["released"] = released
    return result
