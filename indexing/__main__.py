"""`python -m indexing ingest|stats|search`."""

from indexing.cli import main

raise SystemExit(main())
