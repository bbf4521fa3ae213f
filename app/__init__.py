"""User-facing front ends over one service layer: `app.service.ChatService` (shared by the
Streamlit UI and the HTTP API) and `app.api` (the OpenAI-compatible API, `make api`).

Nothing here re-implements retrieval, caching or prompting: those live in `chains` and
`indexing`. Settings are read at the entry points (`python -m app.api`, the Streamlit script).
"""
