"""Write the PDF and Word files of the sample corpus (data/docs/operations/).

They are committed; re-run this after editing the texts below:

    PYTHONPATH=. .venv/bin/python data/make_sample_binaries.py
"""

from __future__ import annotations

from pathlib import Path

from bench.corpus import docx_bytes, pdf_bytes

DOCS = Path(__file__).parent / "docs"

PERFORMANCE_TUNING = [
    """Performance tuning guide

This guide explains which settings change latency, throughput and memory, and how to check the
effect with the benchmarks. Change one thing at a time and compare medians measured in one run.

1. Pick a profile first
The profiles low_latency, balanced and high_throughput move many settings together. Start from the
one that matches your goal, then adjust single values with RAG_ environment variables.

2. Time to first token
Streaming shows the first words early. Time to first token grows with the prompt: a smaller
context budget (chains.context_token_budget) and fewer passages (index.top_k) shorten the prefill.
Chunked prefill keeps long prompts from stalling other requests.""",
    """3. Generation speed
Decoding is bound by memory bandwidth on GPUs: each new token reads all weights once. A 4-bit AWQ
or GPTQ checkpoint reads a quarter of the bytes of a 16-bit one and decodes correspondingly faster.
N-gram speculative decoding helps when answers quote the retrieved context, which RAG answers do:
several drafted tokens are verified in one step. Measure the acceptance rate in the vLLM metrics
before keeping it on.

4. Throughput under load
Continuous batching serves many requests together. Raise serving.max_num_seqs and
serving.max_num_batched_tokens for more concurrent users, and use an fp8 KV cache to fit larger
batches in the same memory. Check requests per second at concurrency 16 against concurrency 1.

5. Prefix caching
Keep the stable parts of the prompt first: system prompt, tool descriptions, conversation summary.
Requests that share a prefix reuse its KV cache. The hit rate is visible in the engine's /metrics.""",
    """6. Retrieval
Retrieval costs one query embedding (about 10 ms for MiniLM on two CPU cores) plus the Chroma and
BM25 searches, which stay in the low milliseconds even at 100,000 chunks. index.candidates_k
controls how many candidates each half contributes to the fusion; larger values cost little and can
help recall.

7. Ingestion
On a CPU the embedding model is the ceiling: the pipeline should reach at least 85 percent of the
raw embedding throughput of the same chunks. index.embed_batch_size trades memory for speed.
Re-ingesting an unchanged corpus only compares file sizes, times and hashes and embeds nothing.

8. The semantic cache
Repeated questions cost a cache lookup instead of a model call. A higher
cache.similarity_threshold gives fewer but safer hits; the precision benchmark shows the trade-off.""",
]

SECURITY = [
    "# Security notes",
    "This document lists how the system handles secrets, network exposure and untrusted input.",
    "## Secrets",
    "API keys and tokens are typed as secrets in the settings and are never written to logs or "
    "printed in error messages. The model server key (llm.api_key), the API key (api.api_key) and "
    "the Chroma token (index.chroma_auth_token) can all be set through RAG_ environment variables "
    "instead of files.",
    "## Network exposure",
    "Every server binds to the loopback interface (127.0.0.1) by default: the vLLM engine, the HTTP "
    "API and a Chroma server you start for http mode. Expose one deliberately by changing its host "
    "setting, and set api.api_key so that requests need a bearer token.",
    "## Untrusted files",
    "Documents are parsed, never executed. Files larger than index.max_file_mb are refused before "
    "they are read. Binary data in a text file, invalid UTF-8 and encrypted or damaged PDFs are "
    "reported per file and skipped.",
    "## Configuration and stored data",
    "YAML files are only read with a safe loader, and nothing is stored or loaded with pickle. The "
    "semantic cache is not allowed to install packages at run time.",
    "## Reporting a problem",
    "Describe the issue, the version and the steps to reproduce it; do not include real keys.",
]

DEPLOYMENT_CHECKLIST = [
    "# Deployment checklist",
    "## Before the first start",
    "Run make install on the target machine and make test once to check both environments.",
    "Choose a profile: low_latency for interactive use, high_throughput for many users, cpu "
    "without a GPU.",
    "Set serving.model to a real instruct model and llm.model to its served name.",
    "## Documents",
    "Run make ingest with DOCS pointing at the document folders, then make stats to check the "
    "counts. Schedule make ingest (with --prune if deletions should propagate) after document "
    "updates; unchanged files cost almost nothing.",
    "## Access",
    "Set api.api_key before exposing the HTTP API beyond the local machine.",
    "## Monitoring",
    "Watch the engine's /metrics for queue length, prefix-cache hits and speculative acceptance, and "
    "re-run the benchmarks after changing settings.",
]


def main() -> None:
    ops = DOCS / "operations"
    ops.mkdir(parents=True, exist_ok=True)
    (ops / "performance-tuning.pdf").write_bytes(pdf_bytes(PERFORMANCE_TUNING, title="Performance tuning guide"))
    (ops / "security.docx").write_bytes(docx_bytes(SECURITY, title="Security notes"))
    (ops / "deployment-checklist.docx").write_bytes(docx_bytes(DEPLOYMENT_CHECKLIST, title="Deployment checklist"))


if __name__ == "__main__":
    main()
