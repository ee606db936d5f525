"""The durable agent run and its logical steps: what agent tool keys are made of (SPEC 29).

An agent framework retries whole turns, re-plans, and resumes from checkpoints; the model's
per-turn tool-call id changes every time. What stays the same is the run the application
started (its id is durable: stored with the conversation, the job or the checkpoint) and,
where the caller says so, the logical step inside it. ``agent_run`` and ``agent_step`` carry
those two facts down to every ``@idempotent_tool`` call through context variables, so they
follow ``await`` and ``asyncio`` tasks (and threads started with a copied context).

Nesting rules:

- ``agent_run(id)`` inside ``agent_run(id)`` (same id) is a no-op: the steps entered so far
  stay in force. Helpers may open the run defensively.
- ``agent_run(other)`` inside ``agent_run(id)`` starts a separate run for its body (a
  sub-agent with its own durable id) with no steps; the outer run resumes on exit. Give
  sub-agents ids derived from the parent's, e.g. ``f"{parent}/research"``, so they are durable
  too.
- ``agent_step(name)`` needs an enclosing ``agent_run``; nested steps form a path
  (``("billing", "refund-2")``), so a deliberate repeat of the same call names another step.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, field, replace
from types import TracebackType

from retrysafe.errors import AgentRunRequired, ConfigurationError


@dataclass(frozen=True, slots=True)
class RunContext:
    """The run a tool call belongs to, and the step path inside it.

    ``tools`` maps each tool name called in this run to the function behind it; the run's step
    contexts share the one mapping (``replace`` copies the reference).
    """

    run_id: str
    steps: tuple[str, ...] = ()
    tools: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def bind_tool(self, tool: str, function: str) -> None:
        """Record that ``tool`` names ``function`` in this run; refuse a second function.

        A tool's key is made of the run, the step, the tool's *name* and its arguments, not of
        the function (the name is what stays the same when the agent resumes in another
        process). Two functions called by one name in one run would therefore share keys, and
        one would be answered with the other's stored result: refused before either runs.
        """
        owner = self.tools.setdefault(tool, function)  # atomic: threads of one run agree
        if owner != function:
            suggestion = "_".join(function.split(".")[-2:])  # "app.files.search": files_search
            raise ConfigurationError(
                f"tool name {tool!r} names two functions in agent run {self.run_id!r}: "
                f"{owner} and {function}. Calls of both with equal arguments would share one "
                f"idempotency key, so one would get the other's result; give one of them its "
                f"own name, e.g. @idempotent_tool(name={suggestion!r})"
            )


_run: ContextVar[RunContext | None] = ContextVar("retrysafe_agent_run", default=None)


def current_run() -> RunContext | None:
    """The enclosing ``agent_run`` (with its steps), or None outside one."""
    return _run.get()


def require_run(what: str) -> RunContext:
    """The enclosing run, or :class:`AgentRunRequired` naming ``what`` needed it."""
    run = _run.get()
    if run is None:
        raise AgentRunRequired(
            f"{what} was called outside agent_run(...): an agent tool's key is derived from the "
            "durable run id, so wrap the agent's work in `with agent_run(run_id):` (the id you "
            "store with the conversation or job, the same on every retry and resume)"
        )
    return run


class _Scope:
    """Sets the run context on enter and restores it on exit; sync and async forms."""

    def __init__(self) -> None:
        self._tokens: list[Token[RunContext | None]] = []

    def _next(self) -> RunContext:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self) -> RunContext:
        ctx = self._next()
        self._tokens.append(_run.set(ctx))
        return ctx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _run.reset(self._tokens.pop())

    async def __aenter__(self) -> RunContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, not {value!r}")
    return value


class agent_run(_Scope):
    """Run the enclosed agent work under the durable run id ``run_id`` (SPEC 29).

    ``with agent_run("run-7f3a"): ...`` or ``async with agent_run("run-7f3a"): ...``.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = _name(run_id, "agent_run id")

    def _next(self) -> RunContext:
        outer = _run.get()
        if outer is not None and outer.run_id == self.run_id:
            return outer
        return RunContext(self.run_id)


class agent_step(_Scope):
    """Name the logical step of the enclosed tool calls (SPEC 29).

    Calls with the same tool, version and arguments in the same run and step are one
    operation. Name a step when the agent deliberately repeats a call (a second refund of the
    same amount); leave it out otherwise, so re-planning cannot change keys.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = _name(name, "agent_step name")

    def _next(self) -> RunContext:
        run = require_run(f"agent_step({self.name!r})")
        return replace(run, steps=(*run.steps, self.name))
