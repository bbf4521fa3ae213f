"""Answers from the indexed documents: a LangChain agent with streaming, citations, summary
memory and a GPTCache semantic cache of whole turns.

    from chains import RagAgent, TurnResult
    from config import load_settings

    with RagAgent.from_settings(load_settings()) as agent:
        for piece in agent.stream("What does the warranty cover?", "demo"):
            if isinstance(piece, TurnResult):
                print("\\n", [source.label() for source in piece.sources])
            else:
                print(piece, end="", flush=True)

Importing this package loads no model and no torch; settings are passed in, never read here.
"""

from chains.agent import RagAgent
from chains.prompts import PROMPT_VERSION
from chains.questions import QuestionError
from chains.results import Source, Step, Timings, TokenUsage, TurnResult
from chains.retriever import IndexRetriever

__all__ = [
    "PROMPT_VERSION",
    "IndexRetriever",
    "QuestionError",
    "RagAgent",
    "Source",
    "Step",
    "Timings",
    "TokenUsage",
    "TurnResult",
]
