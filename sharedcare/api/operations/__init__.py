"""FHIR operations and interactions beyond plain CRUD and search, one module each, called from
the routing in `sharedcare/fhir/api.py` (the way Medplum keeps `fhir/operations/`):

- `everything`: Patient/$everything
- `match`: Patient/$match (IHE PDQm; the matching itself is identity's)
- `patch`: PATCH (JSON Patch, FHIRPath Patch, JSON Merge Patch), also as Bundle entries
- `lastn`: Observation/$lastn
- `summary`: Patient/$summary (an IPS-shaped document)
- `openapi`: the OpenAPI 3.1 document, from the CapabilityStatement's source
- `http`: responses, `Prefer`, conditional reads and request bodies, shared with the API

($export lives with population health: sharedcare/population/export.py.)

Every one of them reads through the governance policy and writes through the one write door
(`Governance.write`), so each request still makes exactly one audit event."""
