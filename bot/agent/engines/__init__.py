"""Reply engines: OpenAI-compatible chat, ElizaOS over HTTP, and the built-in classic ELIZA.

Each provider lives in its own module and is imported only when chosen (see
``bot.agent.factory``), so the ``openai`` SDK is not loaded when ELIZA answers.
"""

from __future__ import annotations

from bot.agent.engines.base import AgentError, Conversation, Incoming, ReplyEngine

__all__ = ["AgentError", "Conversation", "Incoming", "ReplyEngine"]
