"""Shell entry points: `ingest` (exit 1 when any file failed), `stats` and `search`.

Exit status: 0 all good, 1 some files failed (the rest was ingested), 2 nothing could be done
(bad settings, index locked or not an index, other embedding model).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from config import SettingsError, load_settings
from config.settings import IndexSettings
from indexing.errors import IndexingError

EXIT_FAILED_FILES = 1
EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # damaged PDFs are reported per file instead
    _quiet_model_loading()
    try:
        settings = load_settings(args.profile).index
        return int(args.handler(settings, args))
    except (SettingsError, IndexingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m indexing", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="settings profile (default: RAG_PROFILE or balanced)")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="index files and folders (default: index.docs_dir)")
    ingest.add_argument("paths", nargs="*", type=Path, help="files or folders, read recursively")
    ingest.add_argument("--prune", action="store_true", help="remove documents deleted from the given folders")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.add_argument("--profile", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ingest.set_defaults(handler=_ingest)

    stats = commands.add_parser("stats", help="what the index holds")
    stats.add_argument("--json", action="store_true", help="print the manifest and counts as JSON")
    stats.add_argument("--profile", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    stats.set_defaults(handler=_stats)

    search = commands.add_parser("search", help="query the index from a shell")
    search.add_argument("query")
    search.add_argument("--mode", choices=["hybrid", "dense", "bm25"], default="hybrid")
    search.add_argument("--k", type=int, default=None, help="passages to show (default: index.top_k)")
    search.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="metadata equality")
    search.add_argument("--profile", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    search.set_defaults(handler=_search)
    return parser


def _quiet_model_loading() -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers ships with sentence-transformers
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _ingest(settings: IndexSettings, args: argparse.Namespace) -> int:
    from indexing.pipeline import ingest

    report = ingest(settings, args.paths or None, prune=args.prune, progress=False if args.quiet else None)
    print(report.summary())
    return 0 if report.ok else EXIT_FAILED_FILES


def _stats(settings: IndexSettings, args: argparse.Namespace) -> int:
    from indexing.records import IndexRecords
    from indexing.store import close_client, existing_collection, open_client

    by_type: dict[str, tuple[int, int]] = {}
    inflight = 0
    with IndexRecords(settings, readonly=True) as records:
        manifest = records.require_index()
        if records.has_docstore():
            by_type = records.docstore().counts_by_type()
            inflight = len(records.docstore().inflight())
        layout = records.layout
        where = records.name
    client = open_client(settings, layout)
    try:
        stored = existing_collection(client, settings.collection, where).count()
    finally:
        close_client(client)
    if args.json:
        data = {"manifest": vars(manifest), "by_type": by_type, "chroma_count": stored, "in_flight": inflight}
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"Index {where} (collection {manifest.collection!r}, Chroma {manifest.chroma_mode})")
    print(f"  version {manifest.version}, updated {manifest.updated_at}")
    print(f"  {manifest.documents} documents, {manifest.chunks} chunks; Chroma holds {stored}")
    print(
        f"  embedding {manifest.embed_model} ({manifest.embed_dimension}-d, {manifest.embed_backend} backend); "
        f"chunks of <= {manifest.chunk_size} tokens"
    )
    for file_type, (docs, chunks) in sorted(by_type.items()):
        print(f"    {file_type:<9} {docs:>6} documents {chunks:>8} chunks")
    if stored != manifest.chunks or inflight:
        print("  note: an ingest is running or was interrupted; the next `make ingest` completes it")
    return 0


def _search(settings: IndexSettings, args: argparse.Namespace) -> int:
    from indexing.retrieval import open_retriever

    filters = {}
    for item in args.filter:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --filter wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_ERROR
        filters[key] = value
    with open_retriever(settings) as retriever:
        passages = retriever.retrieve(args.query, top_k=args.k, filters=filters or None, mode=args.mode)
    if not passages:
        print("no passages found")
    for rank, p in enumerate(passages, start=1):
        where = p.source + (f" p.{p.page}" if p.page else "") + (f" › {p.heading}" if p.heading else "")
        print(f"{rank}. [{p.score:.4f}] {where} (chunk {p.chunk})")
        print(textwrap.indent(textwrap.shorten(p.text, 300, placeholder=" …"), "   "))
    return 0
