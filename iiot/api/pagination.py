"""Pagination every list endpoint shares: page numbers for lists, cursors for time series."""

from __future__ import annotations

from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


class TimeCursorPagination(pagination.CursorPagination):
    """Stable pagination over append-only, time-ordered rows (audit log, telemetry export)."""

    ordering = "-created_at"
    page_size_query_param = "page_size"
    max_page_size = 1000
