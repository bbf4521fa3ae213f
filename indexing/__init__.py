"""Documents -> a persistent Chroma + BM25 index built with LlamaIndex, and hybrid retrieval over it."""
