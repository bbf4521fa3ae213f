"""A tiny product corpus the chains tests index (importable by tests: unlike `conftest`)."""

from __future__ import annotations

from pathlib import Path

DOCS = {
    "warranty.md": """# X200 warranty

## Coverage

The X200 warranty covers parts and labour for two years from the date of purchase.
Accidental damage, water damage and normal wear are not covered.

## Claims

To claim, email support with the serial number and the receipt.
""",
    "battery.md": """# X200 battery

## Battery life

The X200 battery lasts about ten hours on one charge when playing music, and six hours of video.

## Charging

A full charge takes ninety minutes with the supplied 30 W adapter.
""",
    "shipping.md": """# Shipping

## Europe

Orders ship from Rotterdam. Shipping to Norway takes five working days and costs 12 euros.
Shipping within the EU takes two to three working days.

## Returns

Unused products can be returned within 30 days for a full refund.
""",
    "company.md": """# About Acme Audio

Acme Audio was founded in 2009 in Utrecht. It makes headphones and portable speakers,
among them the X200 speaker and the Q5 headphones.
""",
}


def write_docs(root: Path, docs: dict[str, str] = DOCS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (root / name).write_text(text, encoding="utf-8")
    return root
