"""Adapters for agent SDKs (SPEC 30): each module imports its SDK lazily, on first use.

- :mod:`onceonly.tools.adapters.openai_agents`  OpenAI Agents SDK function tools
- :mod:`onceonly.tools.adapters.langchain`      LangChain tools
- :mod:`onceonly.tools.adapters.mcp`            MCP server tools
"""
