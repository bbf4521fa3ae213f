"""Helpers for the indexing tests: the fixture corpus, reading Chroma directly, CLI environments."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import chromadb
from chromadb.config import Settings as ChromaSettings

from bench.corpus import docx_bytes, pdf_bytes
from config.settings import REPO_ROOT, IndexSettings

ASTRONOMY = """# Astronomy notes

The night sky has been studied for thousands of years.

## Planets

### Jupiter

Jupiter is the largest planet in the solar system, a gas giant with a Great Red Spot storm
larger than Earth. It has dozens of moons, among them Ganymede, the biggest moon of all.

### Mars

Mars is a cold desert world with iron oxide dust that makes it look red.

## Stars

Stars fuse hydrogen into helium in their cores. Our Sun is a yellow dwarf star.
"""

COOKING = """Baking sourdough bread

Sourdough bread rises with a starter of wild yeast and lactic acid bacteria instead of
commercial yeast. Feed the starter with flour and water, let the dough ferment overnight, shape
the loaf and bake it in a hot Dutch oven for a crackling crust.
"""

GARDENING = """<html><head><title>Growing tomatoes</title></head><body>
<h1>Growing tomatoes</h1>
<p>Tomatoes need full sun, at least eight hours a day, and deep watering twice a week.</p>
<h2>Pests</h2>
<p>Aphids and hornworms attack tomato plants; ladybugs eat aphids.</p>
</body></html>"""

FINANCE_PAGES = [
    "Personal finance basics. A budget lists income and expenses for each month.",
    "Compound interest means interest earns interest: savings grow exponentially over decades. "
    "The rule of 72 estimates the years needed to double money.",
]

SAILING = [
    "# Sailing handbook",
    "A sailboat moves by wind pressure on its sails; tacking zigzags the boat upwind.",
    "## Knots",
    "The bowline knot makes a fixed loop at the end of a rope and is easy to untie.",
]

TRAINS = "line,operator,top_speed_kmh\nShinkansen,JR Central,320\nTGV,SNCF,320\nEurostar,Eurostar,300\n"

VOLCANO = '{"volcano": "Mount Etna", "country": "Italy", "note": "Etna is the most active volcano in Europe."}\n'

CHESS = """# Chess openings

The Sicilian Defence answers 1.e4 with c5 and leads to sharp, unbalanced positions.
The secret catalogue code of this note is XQ-7731.
"""


def write_fixture_corpus(root: Path) -> Path:
    """Eight small documents on unrelated topics, in every supported format."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "astronomy.md").write_text(ASTRONOMY, encoding="utf-8")
    (root / "cooking.txt").write_text(COOKING, encoding="utf-8")
    (root / "gardening.html").write_text(GARDENING, encoding="utf-8")
    (root / "finance.pdf").write_bytes(pdf_bytes(FINANCE_PAGES, title="Money matters"))
    (root / "sailing.docx").write_bytes(docx_bytes(SAILING, title="Sailing handbook"))
    (root / "trains.csv").write_text(TRAINS, encoding="utf-8")
    (root / "volcano.json").write_text(VOLCANO, encoding="utf-8")
    (root / "nested").mkdir(exist_ok=True)
    (root / "nested" / "chess.md").write_text(CHESS, encoding="utf-8")
    return root


FIXTURE_SOURCES = {
    "astronomy.md",
    "cooking.txt",
    "gardening.html",
    "finance.pdf",
    "sailing.docx",
    "trains.csv",
    "volcano.json",
    "nested/chess.md",
}


def chroma_records(settings: IndexSettings) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every stored chunk: id -> (text, metadata), read straight from Chroma in a fresh client."""
    client = chromadb.PersistentClient(
        path=str(Path(settings.index_dir) / "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
    )
    try:
        got = client.get_collection(settings.collection, embedding_function=None).get(
            include=["documents", "metadatas"]
        )
    finally:
        client.close()
    return {i: (d, dict(m)) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)}


def cli_env(settings: IndexSettings, **extra: str) -> dict[str, str]:
    """Environment for `python -m indexing` pointing at these settings (for subprocess tests)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        ANONYMIZED_TELEMETRY="False",
        RAG_INDEX__DOCS_DIR=str(settings.docs_dir),
        RAG_INDEX__INDEX_DIR=str(settings.index_dir),
        RAG_INDEX__EMBED_BATCH_SIZE=str(settings.embed_batch_size),
        RAG_INDEX__CHUNK_SIZE=str(settings.chunk_size),
        RAG_INDEX__CHUNK_OVERLAP=str(settings.chunk_overlap),
        RAG_INDEX__COMMIT_CHARS=str(settings.commit_chars),
        RAG_INDEX__COLLECTION=settings.collection,
        **extra,
    )
    if settings.state_url is not None:  # shared mode: the same PostgreSQL and Chroma server
        env.update(
            RAG_STATE__MODE="shared",
            RAG_STATE__POSTGRES_URL=settings.state_url.get_secret_value(),
            RAG_INDEX__CHROMA_HOST=settings.chroma_host,
            RAG_INDEX__CHROMA_PORT=str(settings.chroma_port),
        )
    return env


PYTHON = sys.executable


def open_files_under(folder: Path) -> int:
    """File descriptors of this process pointing into `folder` (Linux /proc): what a close must release."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(f"{folder}{os.sep}")
        except OSError:  # closed between listdir and readlink
            continue
    return count
