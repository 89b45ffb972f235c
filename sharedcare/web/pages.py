"""Routes of the clinician's pages (find a patient, patient view, care plans, access log)."""

from __future__ import annotations


def routes(sc) -> list:
    return []
