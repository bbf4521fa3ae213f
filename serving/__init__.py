"""The vLLM engine: render its command, validate it offline, launch and stop it; the offline tiny model.

Imports nothing here: `serving.validate` runs inside the engine environment, which has only vLLM.
"""
