"""Data: atomic-file checks, loading RecBole's split (:func:`load_data`), text fields, item text, the task
samples (:mod:`recbole_ckf.data.tasks`), prompt templates and collation."""

from recbole_ckf.data.loading import load_data

__all__ = ["load_data"]
