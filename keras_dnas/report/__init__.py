"""Summaries and reports of searches."""

from keras_dnas.report.summary import Summary, summary

__all__ = ["Summary", "summary"]
