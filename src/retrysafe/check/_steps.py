"""What the checker asks its driver to do, and what comes back: plain data, no I/O.

The cases (:mod:`._cases`) are one step generator; a driver (:mod:`._drivers`) performs each
step with an ``httpx.Client`` or ``httpx.AsyncClient`` and sends the answers back in. So the
checks are written once for both kinds of client, as the library's claim loop and retry flow are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HeaderValue = str | bytes


@dataclass(frozen=True, slots=True)
class Target:
    """The request the checker repeats, and how the endpoint is expected to take keys."""

    url: str
    method: str = "POST"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    key_header: str = "Idempotency-Key"
    required: bool = False
    concurrency: int = 10
    ttl: float | None = None
    mismatch_body: bytes | None = None  # a second request the endpoint accepts on its own


@dataclass(frozen=True, slots=True)
class Probe:
    """One request: the target's, with these key headers and, when set, another body."""

    key_headers: tuple[tuple[str, HeaderValue], ...]
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back. ``status`` is 0 when the exchange failed (``error`` says how)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)

    def describe(self) -> str:
        if self.error is not None:
            return f"no answer ({self.error})"
        return f"{self.status} with {len(self.body)} bytes"


@dataclass(frozen=True, slots=True)
class Batch:
    """Send every probe at once (one connection each); the answers come back in order."""

    probes: tuple[Probe, ...]


@dataclass(frozen=True, slots=True)
class Overlap:
    """Send ``first``; the moment its status line arrives, send ``second``, as a client whose
    read timed out retries while the first answer is still on its way. Answers: both."""

    first: Probe
    second: Probe


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


Step = Batch | Overlap | Pause


@dataclass(frozen=True, slots=True)
class CaseResult:
    id: str
    title: str
    level: str  # "must" | "should" | "info"
    result: str  # "pass" | "fail" | "skip"
    detail: str
    reference: str


@dataclass(frozen=True, slots=True)
class Report:
    """Every case's result for one target; ``ok`` when every ``must`` case passed."""

    method: str
    url: str
    cases: tuple[CaseResult, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(case.result == "pass" for case in self.cases if case.level == "must")

    def case(self, case_id: str) -> CaseResult:
        return next(case for case in self.cases if case.id == case_id)

    @property
    def summary(self) -> dict[str, int | bool]:
        counts = {name: sum(c.result == name for c in self.cases) for name in ("pass", "fail")}
        return {
            "passed": counts["pass"],
            "failed": counts["fail"],
            "skipped": len(self.cases) - counts["pass"] - counts["fail"],
            "must_not_passed": sum(c.level == "must" and c.result != "pass" for c in self.cases),
            "ok": self.ok,
        }

    def to_dict(self) -> dict[str, object]:
        return {
            "target": {"method": self.method, "url": self.url},
            "cases": [
                {
                    "id": c.id,
                    "title": c.title,
                    "level": c.level,
                    "result": c.result,
                    "detail": c.detail,
                    "reference": c.reference,
                }
                for c in self.cases
            ],
            "summary": self.summary,
        }
