"""The agent's one tool: a read-only search of the index for more passages within the turn.

It is the only tool the agent is given (a model asking for any other name gets an error
message back, nothing runs), and it returns passages fenced as untrusted data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain.tools import ToolRuntime, tool
from langchain_core.tools import BaseTool

from chains.context import TurnContext
from chains.prompts import SEARCH_TOOL_DESCRIPTION, untrusted

if TYPE_CHECKING:
    from indexing.retrieval import HybridRetriever


def make_search_tool(retriever: HybridRetriever, top_k: int) -> BaseTool:
    """`search_documents(query)`, numbering its passages after those the turn already holds."""

    @tool("search_documents", description=SEARCH_TOOL_DESCRIPTION)
    async def search_documents(query: str, runtime: ToolRuntime[TurnContext]) -> str:
        turn = runtime.context
        with turn.trace.stage("retrieval"):
            passages = await retriever.aretrieve(query, top_k=top_k)
        return untrusted(turn.registry.add(passages))

    return search_documents
