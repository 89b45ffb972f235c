"""The FHIR HTTP API: the layer above governance.

``sharedcare/fhir`` is the FHIR *model* (definitions, validation, outcomes, codes, the patient
compartment) that the store and every other package use; this package is the HTTP API on top of
governance: the RESTful interactions (``rest``), batch and transaction Bundles (``bundle``), the
CapabilityStatement (``capability``) and one module per operation (``operations/``).
"""

from .rest import FhirApi

__all__ = ["FhirApi"]
