"""SQuAD-shaped question sets as a document corpus: one Markdown file per paragraph.

Any JSON in SQuAD v1.1's layout works (`data` -> articles with `title` and `paragraphs`, each with
`context` and `qas` holding `question`, `id` and `answers[].text`). A question's gold passage is
the paragraph file it was written on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import REPO_ROOT

SHIPPED_SUBSET = REPO_ROOT / "data" / "squad" / "squad-dev-v1.1-subset.json"
"""48 paragraphs of six articles of SQuAD v1.1 dev, shipped with the project (data/squad/README.md)."""


@dataclass(frozen=True)
class SquadQuestion:
    id: str
    text: str
    answers: tuple[str, ...]
    source: str
    """Path of the question's paragraph file, relative to the corpus folder."""


@dataclass(frozen=True)
class SquadArticle:
    title: str
    folder: str
    paragraphs: tuple[str, ...]
    questions: tuple[SquadQuestion, ...]


def read_squad(path: Path) -> list[SquadArticle]:
    """The articles of a SQuAD-shaped file; a file of another shape raises ValueError naming what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [_article(a, article) for a, article in enumerate(data["data"])]
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a SQuAD v1.1-shaped file ({type(exc).__name__}: {exc})") from None


def _article(a: int, article: dict[str, Any]) -> SquadArticle:
    title = article["title"].replace("_", " ")
    folder = f"{a:02d}-{re.sub(r'[^A-Za-z0-9]+', '-', title).strip('-')[:40]}"
    questions = [
        SquadQuestion(
            qa["id"], qa["question"].strip(), tuple(ans["text"] for ans in qa["answers"]), f"{folder}/p{p:03d}.md"
        )
        for p, paragraph in enumerate(article["paragraphs"])
        for qa in paragraph["qas"]
    ]
    paragraphs = tuple(paragraph["context"] for paragraph in article["paragraphs"])
    return SquadArticle(title, folder, paragraphs, tuple(questions))


def write_corpus(articles: list[SquadArticle], corpus: Path) -> int:
    """One `# Title` Markdown file per paragraph of `articles` under `corpus`; returns the file count."""
    count = 0
    for article in articles:
        folder = corpus / article.folder
        folder.mkdir(parents=True, exist_ok=True)
        for p, context in enumerate(article.paragraphs):
            (folder / f"p{p:03d}.md").write_text(f"# {article.title}\n\n{context}\n", encoding="utf-8")
            count += 1
    return count
