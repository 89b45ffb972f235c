"""Search-index extraction for the FHIR store (HAPI-style: one table per parameter kind).

    from sharedcare.store.indexing import Indexer
    rows = Indexer().index(resource)   # IndexRows: tokens, strings, dates, numbers, ...

The R4 SearchParameter expressions are compiled once into plain Python closures (see
``fhirpath``); expressions outside the supported FHIRPath subset fall back to fhirpathpy and are
listed in ``Indexer.fallbacks``. Composite/special parameters are listed in ``Indexer.skipped``.
"""

from . import fulltext
from .indexer import DEFAULT_DEFINITIONS, SUPPORTED_TYPES, Indexer, IndexRows, SearchParam
from .values import MAX_DATE, MIN_DATE, date_range, normalize_string, number_range

__all__ = [
    "DEFAULT_DEFINITIONS",
    "MAX_DATE",
    "MIN_DATE",
    "SUPPORTED_TYPES",
    "IndexRows",
    "Indexer",
    "SearchParam",
    "date_range",
    "fulltext",
    "normalize_string",
    "number_range",
]
