"""Functions and agent tools that run once per key (SPEC section 4).

    from retrysafe.tools import idempotent, idempotent_tool, agent_run, agent_step
    from retrysafe import current_key

See docs/tools.md for keys, nesting rules, serialization and the SDK adapters.
"""

from __future__ import annotations

from retrysafe.errors import AgentRunRequired, InstanceIdentityRequired, SerializationError
from retrysafe.tools._decorators import idempotent, idempotent_tool, tool_key
from retrysafe.tools._runs import RunContext, agent_run, agent_step, current_run
from retrysafe.tools._serializer import Serializer, TaggedJSON

__all__ = [
    "AgentRunRequired",
    "InstanceIdentityRequired",
    "RunContext",
    "SerializationError",
    "Serializer",
    "TaggedJSON",
    "agent_run",
    "agent_step",
    "current_run",
    "idempotent",
    "idempotent_tool",
    "tool_key",
]
