"""Adapters for agent SDKs (SPEC 30): each module imports its SDK lazily, on first use.

- :mod:`retrysafe.tools.adapters.openai_agents`  OpenAI Agents SDK function tools
- :mod:`retrysafe.tools.adapters.langchain`      LangChain tools
- :mod:`retrysafe.tools.adapters.mcp`            MCP server tools
"""

# The adapters are the three modules above, imported by name (each needs its own SDK), so the
# package itself exports nothing.
__all__: list[str] = []
