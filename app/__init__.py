"""User-facing front ends (Streamlit chat UI, OpenAI-compatible HTTP API): built in a later issue."""
