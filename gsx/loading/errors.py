"""Exceptions raised while finding, reading or checking SAE files.

Every error derives from SAELoadError, so a caller can catch one type. Each
subclass also derives from the built-in type that fits it (FileNotFoundError or
ValueError), so callers that already catch those keep working.
"""

from __future__ import annotations


class SAELoadError(Exception):
    """Base class of every gsx SAE loading error; its message names the failing value and the fix."""


class SAENotFoundError(SAELoadError, FileNotFoundError):
    """Raised when the files of an SAE are not on disk and cannot be downloaded."""


class UnknownSAEError(SAELoadError, ValueError):
    """Raised when a release id or sae_id is not in the SAELens registry."""


class SAEFormatError(SAELoadError, ValueError):
    """Raised when SAE files are corrupt, have unexpected keys or shapes, or do not fit the model."""
