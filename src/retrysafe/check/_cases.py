"""The conformance cases, written once as a step generator (no I/O: a driver sends the probes).

A black box cannot count executions, so the checker tells them apart by their answers: every
execution of a non-idempotent endpoint answers something new (an id, a time). Two requests with
two fresh keys come first; when their answers are byte-identical, a replay cannot be told from a
second execution and the cases that depend on it are skipped with that reason, never passed.

Ids are stable (tools and CI parse them); references name the section of
draft-ietf-httpapi-idempotency-key-header-07 or Stripe's documented behaviour they come from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from retrysafe.check._steps import (
    Answer,
    Batch,
    CaseResult,
    HeaderValue,
    Overlap,
    Pause,
    Probe,
    Report,
    Step,
    Target,
)

DRAFT = "draft-ietf-httpapi-idempotency-key-header-07"
STRIPE = "Stripe API reference, 'Idempotent requests'"
PROBLEM_JSON = "application/problem+json"

# How a duplicate that met a request still in flight is retried: as a client honouring
# Retry-After would, with the pause capped so a hostile Retry-After cannot stall the checker.
IN_FLIGHT_TRIES = 10
MAX_PAUSE = 5.0
DEFAULT_PAUSE = 0.5

Flow = Generator[Step, tuple[Answer, ...], Report]
Sub = Generator[Step, tuple[Answer, ...], Answer]


class CheckError(Exception):
    """The endpoint cannot be checked as given (unreachable, or it refuses the base request)."""


@dataclass
class _Run:
    target: Target
    new_key: Callable[[], str]
    conflicts: list[Answer] = field(default_factory=list)  # every 409 seen, for Retry-After
    errors: list[tuple[str, Answer]] = field(default_factory=list)  # refusals, for problem+json
    results: list[CaseResult] = field(default_factory=list)
    distinct: bool = True  # two executions answer differently, so replays can be recognised

    def keyed(self, key: HeaderValue, body: bytes | None = None) -> Probe:
        return Probe(((self.target.key_header, key),), body)

    def add(self, id: str, title: str, level: str, result: str, detail: str, ref: str) -> None:
        self.results.append(CaseResult(id, title, level, result, detail, ref))

    def settled(self, probe: Probe) -> Sub:
        """Send ``probe``; while the answer is a 409 (in flight), wait as told and send again."""
        (answer,) = yield Batch((probe,))
        for _ in range(IN_FLIGHT_TRIES):
            if answer.status != 409:
                break
            self.conflicts.append(answer)
            yield Pause(_retry_after(answer))
            (answer,) = yield Batch((probe,))
        return answer


def _retry_after(answer: Answer) -> float:
    raw = answer.header("retry-after")
    try:
        return min(MAX_PAUSE, max(0.0, float(raw))) if raw is not None else DEFAULT_PAUSE
    except ValueError:  # an HTTP date: not worth parsing for a bounded pause
        return DEFAULT_PAUSE


def _same(a: Answer, b: Answer) -> bool:
    return a.error is None and b.error is None and (a.status, a.body) == (b.status, b.body)


def variant_body(body: bytes, marker: str) -> bytes:
    """Another request the endpoint probably accepts: a JSON object gains a field; anything
    else gains a suffix. (The checker first sends it with a fresh key to see that it is.)"""
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        return json.dumps({**doc, "retrysafe_check": marker}).encode()
    return body + f"-retrysafe-check-{marker}".encode()


def check_flow(target: Target, new_key: Callable[[], str]) -> Flow:
    """Every case against ``target``; returns the :class:`Report`."""
    run = _Run(target, new_key)
    (first,) = yield Batch((run.keyed(new_key()),))
    if first.error is not None:
        raise CheckError(f"could not reach {target.url}: {first.error}")
    if not first.ok:
        excerpt = first.body[:200].decode("utf-8", "replace")
        raise CheckError(
            f"{target.method} {target.url} with a fresh key answered {first.status}, not 2xx, so "
            f"there is nothing to repeat; send a request the endpoint accepts (--json/--data, "
            f"-H for credentials). Its answer: {excerpt!r}"
        )
    (second,) = yield Batch((run.keyed(new_key()),))
    run.distinct = not _same(first, second)

    replayed = yield from _replay(run)
    yield from _mismatch(run)
    yield from _concurrent(run)
    yield from _lost_response(run)
    _in_flight_retry_after(run)
    yield from _missing_key(run)
    yield from _malformed_key(run)
    _problem_json(run)
    _replayed_marker(run, replayed)
    yield from _expiry(run)
    return Report(target.method, target.url, tuple(run.results))


INDISTINCT = (
    "two executions with two fresh keys answered byte for byte the same, so a replay cannot be "
    "told from a second execution; point the checker at an endpoint whose answer carries "
    "something new per execution (an id, a timestamp)"
)


def _replay(run: _Run) -> Generator[Step, tuple[Answer, ...], Answer | None]:
    title, ref = "a retry gets the first answer", f"{DRAFT} §2.6 (Retry); {STRIPE}"
    key = run.new_key()
    (first,) = yield Batch((run.keyed(key),))
    again = yield from run.settled(run.keyed(key))
    if not run.distinct:
        run.add("replay", title, "must", "skip", INDISTINCT, ref)
        return None
    if _same(first, again):
        detail = f"the retry got {again.describe()}, byte for byte the first answer"
        run.add("replay", title, "must", "pass", detail, ref)
        return again
    if again.ok:
        detail = f"the retry answered {again.describe()}: a different body, so it ran again"
    else:
        detail = f"the retry answered {again.describe()} instead of the first {first.describe()}"
    run.add("replay", title, "must", "fail", detail, ref)
    return None


def _mismatch(run: _Run) -> Generator[Step, tuple[Answer, ...], None]:
    title = "the same key with another request is refused"
    ref = f"{DRAFT} §2.7 (422 for a reused key); {STRIPE}"
    other_body = run.target.mismatch_body or variant_body(run.target.body, run.new_key())
    (alone,) = yield Batch((run.keyed(run.new_key(), other_body),))
    key = run.new_key()
    (first,) = yield Batch((run.keyed(key),))
    (reused,) = yield Batch((run.keyed(key, other_body),))
    again = yield from run.settled(run.keyed(key))
    if not alone.ok:
        detail = (
            f"the altered request answered {alone.describe()} on its own, with a fresh key, so a "
            "refusal under a used key would prove nothing; give one the endpoint accepts with "
            "--mismatch-json"
        )
        run.add("mismatch", title, "must", "skip", detail, ref)
        return
    if not reused.ok and reused.status:
        run.errors.append(("mismatch", reused))
    if reused.ok:
        what = "replayed the first request's answer" if _same(first, reused) else "ran it"
        detail = f"another body under a used key answered {reused.describe()}: the endpoint {what}"
        run.add("mismatch", title, "must", "fail", detail, ref)
    elif not 400 <= reused.status < 500:
        detail = f"another body under a used key answered {reused.describe()}, not a 4xx refusal"
        run.add("mismatch", title, "must", "fail", detail, ref)
    elif run.distinct and not _same(first, again):
        detail = (
            f"refused with {reused.status}, but afterwards the original request answered "
            f"{again.describe()} instead of replaying its first answer"
        )
        run.add("mismatch", title, "must", "fail", detail, ref)
    else:
        note = "" if reused.status == 422 else f" (the draft recommends 422, not {reused.status})"
        detail = f"refused with {reused.status}{note}; the original request still replays"
        run.add("mismatch", title, "must", "pass", detail, ref)


def _concurrent(run: _Run) -> Generator[Step, tuple[Answer, ...], None]:
    n = run.target.concurrency
    title = f"{n} identical requests at once run once"
    ref = f"{DRAFT} §2.6 (Concurrent Request)"
    key = run.new_key()
    answers = yield Batch(tuple(run.keyed(key) for _ in range(n)))
    final = yield from run.settled(run.keyed(key))
    conflicts = [a for a in answers if a.status == 409]
    run.conflicts.extend(conflicts)
    oks = [a for a in answers if a.ok]
    others = [a for a in answers if not a.ok and a.status != 409]
    bodies = {a.body for a in oks} | ({final.body} if final.ok else set())
    if not run.distinct:
        run.add("concurrent", title, "must", "skip", INDISTINCT, ref)
    elif len(bodies) > 1:
        ran = len(bodies)
        detail = f"{ran} different answers to one key: the operation ran {ran} times"
        run.add("concurrent", title, "must", "fail", detail, ref)
    elif others:
        seen = ", ".join(sorted({a.describe() for a in others}))
        run.add("concurrent", title, "must", "fail", f"some duplicates got {seen}", ref)
    elif not final.ok:
        detail = f"afterwards the key answered {final.describe()}, not the stored answer"
        run.add("concurrent", title, "must", "fail", detail, ref)
    else:
        detail = f"one execution: {len(oks)} answers of 2xx with one body, {len(conflicts)} × 409"
        run.add("concurrent", title, "must", "pass", detail, ref)


def _lost_response(run: _Run) -> Generator[Step, tuple[Answer, ...], None]:
    title = "a retry after a lost answer gets that answer"
    ref = f"{DRAFT} §1 (the timeout that motivates the key), §2.6 (Retry)"
    key = run.new_key()
    first, retry = yield Overlap(run.keyed(key), run.keyed(key))
    if retry.status == 409:
        run.conflicts.append(retry)
        retry = yield from run.settled(run.keyed(key))
    if not run.distinct:
        run.add("lost-response", title, "must", "skip", INDISTINCT, ref)
    elif first.error is not None:
        run.add("lost-response", title, "must", "fail", f"the first {first.describe()}", ref)
    elif _same(first, retry):
        detail = (
            "a retry sent as soon as the first answer began (as after a read timeout) got that "
            f"answer, {retry.describe()}, byte for byte"
        )
        run.add("lost-response", title, "must", "pass", detail, ref)
    else:
        ran = " (a different body: the operation ran twice)" if retry.ok else ""
        detail = f"the retry got {retry.describe()}{ran}, not the lost {first.describe()}"
        run.add("lost-response", title, "must", "fail", detail, ref)


def _in_flight_retry_after(run: _Run) -> None:
    title, ref = "a 409 for a request in flight says when to retry", f"{DRAFT} §2.7 (409)"
    if not run.conflicts:
        detail = "no duplicate was answered 409 (duplicates waited for the first answer instead)"
        run.add("in-flight-retry-after", title, "should", "skip", detail, ref)
        return
    run.errors.extend(("in-flight", a) for a in run.conflicts)
    bare = [a for a in run.conflicts if a.header("retry-after") is None]
    if bare:
        detail = f"{len(bare)} of {len(run.conflicts)} answers of 409 carry no Retry-After"
        run.add("in-flight-retry-after", title, "should", "fail", detail, ref)
    else:
        detail = f"all {len(run.conflicts)} answers of 409 carry Retry-After"
        run.add("in-flight-retry-after", title, "should", "pass", detail, ref)


def _missing_key(run: _Run) -> Generator[Step, tuple[Answer, ...], None]:
    required = run.target.required
    level = "must" if required else "info"
    title, ref = "a keyless request is refused with 400", f"{DRAFT} §2.7 (400 for a missing key)"
    (answer,) = yield Batch((Probe(()),))
    if answer.status == 400:
        run.errors.append(("missing-key", answer))
        run.add("missing-key", title, level, "pass", "refused with 400", ref)
    elif required:
        detail = f"a keyless request answered {answer.describe()}"
        run.add("missing-key", title, level, "fail", detail, ref)
    else:
        detail = (
            f"a keyless request answered {answer.describe()}: keys are optional here "
            "(pass --required if they must not be)"
        )
        run.add("missing-key", title, level, "pass", detail, ref)


def _malformed_key(run: _Run) -> Generator[Step, tuple[Answer, ...], None]:
    title, ref = "malformed keys are refused with 400", f"{DRAFT} §2.1 (one sf-string field)"
    name = run.target.key_header
    probes = {
        "empty": Probe(((name, ""),)),
        "300 characters": Probe(((name, "k" * 300),)),
        "non-ASCII": Probe(((name, ("clé-" + run.new_key()[:8]).encode()),)),
        "two headers": Probe(((name, run.new_key()), (name, run.new_key()))),
    }
    answers = yield Batch(tuple(probes.values()))
    accepted = []
    for label, answer in zip(probes, answers, strict=True):
        if 400 <= answer.status < 500:
            run.errors.append(("malformed-key", answer))
        else:
            accepted.append(f"{label}: {answer.describe()}")
    if accepted:
        detail = "not refused: " + "; ".join(accepted)
        run.add("malformed-key", title, "should", "fail", detail, ref)
    else:
        detail = "empty, over-long, non-ASCII and doubled keys were all refused"
        run.add("malformed-key", title, "should", "pass", detail, ref)


def _problem_json(run: _Run) -> None:
    title, ref = "refusals are problem+json", "RFC 9457; " + f"{DRAFT} §2.7 (examples)"
    if not run.errors:
        run.add("problem-json", title, "info", "skip", "no refusal was seen", ref)
        return
    plain = sorted(
        {
            f"{case} ({answer.status})"
            for case, answer in run.errors
            if not (answer.header("content-type") or "").lower().startswith(PROBLEM_JSON)
        }
    )
    if plain:
        run.add("problem-json", title, "info", "fail", "not problem+json: " + ", ".join(plain), ref)
    else:
        detail = f"all {len(run.errors)} refusals seen are {PROBLEM_JSON}"
        run.add("problem-json", title, "info", "pass", detail, ref)


def _replayed_marker(run: _Run, replayed: Answer | None) -> None:
    title, ref = "replays are marked", "IETF httpapi discussion; Stripe's Idempotent-Replayed"
    if replayed is None:
        run.add("replayed-marker", title, "info", "skip", "no replay was recognised", ref)
        return
    marks = [f"{k}: {v}" for k, v in replayed.headers if "replay" in k.lower()]
    if marks:
        run.add("replayed-marker", title, "info", "pass", "; ".join(marks), ref)
    else:
        detail = "a replay looks like a first answer (no header naming it a replay)"
        run.add("replayed-marker", title, "info", "fail", detail, ref)


def _expiry(run: _Run) -> Generator[Step, tuple[Answer, ...], None]:
    title, ref = "after its TTL a key runs as new", f"{DRAFT} §2.3 (validity and expiry)"
    ttl = run.target.ttl
    if ttl is None:
        run.add("expiry", title, "info", "skip", "pass --ttl SECONDS to check it", ref)
        return
    key = run.new_key()
    (first,) = yield Batch((run.keyed(key),))
    yield Pause(ttl + 1.0)
    (later,) = yield Batch((run.keyed(key),))
    if not run.distinct:
        run.add("expiry", title, "info", "skip", INDISTINCT, ref)
    elif later.ok and not _same(first, later):
        detail = f"{ttl + 1:g} s later the key ran as new ({later.describe()})"
        run.add("expiry", title, "info", "pass", detail, ref)
    else:
        detail = f"{ttl + 1:g} s later the key answered {later.describe()}"
        what = " (still the first answer)" if _same(first, later) else ""
        run.add("expiry", title, "info", "fail", detail + what, ref)
