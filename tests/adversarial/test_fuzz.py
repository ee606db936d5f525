"""The HTTP fuzzer's short run: a few hundred generated requests per door, every invariant
checked after each scenario (see ``kit/fuzz.py``). Derandomized so CI sees the same inputs.

One server per door for the whole module. Input classes that trigger defects being fixed in
parallel are not generated here (``kit.fuzz.KNOWN``); ``bench/fuzz.py --known`` generates them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from kit.fuzz import (
    DOORS,
    Checker,
    Door,
    Scenario,
    asgi_door,
    run_scenario,
    scenarios,
)

EXAMPLES = 60  # scenarios per door (1-8 steps each, bursts send 2-4 requests)

# Fixed on main since the known-defect list was written: generated in CI.
FIXED = frozenset({"dot-segment", "framing-gateway", "transient", "path-escape"})


@pytest.fixture(scope="module", params=sorted(DOORS))
def door(request: pytest.FixtureRequest) -> Iterator[tuple[Door, Checker]]:
    with DOORS[request.param]() as running:
        checker = Checker(running.kind)
        yield running, checker
        # Executions that finished after their scenario was checked (the handler of a cut
        # connection) are checked here, once the app is idle; and nothing crashed on the way.
        late = checker.settle(running.recorder)
        assert not late, "\n".join(map(str, late))
        assert not running.crashes.crashes, "\n".join(running.crashes.crashes)


def test_fuzz_door(door: tuple[Door, Checker]) -> None:
    running, checker = door

    @settings(
        derandomize=True,
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenarios(running.kind, FIXED))
    def check(scenario: Scenario) -> None:
        found = run_scenario(running, checker, scenario)
        assert not found, "\n".join(map(str, found))

    check()
    assert not running.crashes.crashes, "\n".join(running.crashes.crashes)
    assert checker.requests >= EXAMPLES  # every scenario sent something
    assert checker.replays > 0  # retries were answered by replay ...
    assert checker.executed > 0  # ... and the app ran
    assert checker.statuses[400] > 0  # refused keys or framing


@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the failing scenario's
@pytest.mark.parametrize(
    ("planted", "finds"),
    [
        ({"scope": lambda facts: "everyone"}, "cross-principal"),
        ({"fingerprint": lambda facts: facts.method + facts.path}, "cross-request"),
        ({"store_server_errors": True}, "stored-transient"),
    ],
    ids=["shared-scope", "body-blind-fingerprint", "stored-5xx"],
)
def test_the_fuzzer_finds_planted_defects(planted: dict[str, object], finds: str) -> None:
    """The fuzzer keeps its teeth: an ASGI door with a defect planted in its policy fails."""
    with asgi_door(**planted) as running:
        checker = Checker(running.kind)

        @settings(
            derandomize=True,
            max_examples=500,
            deadline=None,
            database=None,
            phases=[Phase.generate],  # the first example that fails is enough
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(scenarios(running.kind))
        def check(scenario: Scenario) -> None:
            found = run_scenario(running, checker, scenario)
            assert not [v for v in found if v.invariant == finds]

        with pytest.raises(AssertionError):
            check()
