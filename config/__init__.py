"""Typed settings shared by every part; see `config.settings`."""

from config.settings import PROFILES, Settings, SettingsError, load_settings

__all__ = ["PROFILES", "Settings", "SettingsError", "load_settings"]
