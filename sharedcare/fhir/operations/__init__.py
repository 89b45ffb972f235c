"""FHIR operations and interactions beyond plain CRUD and search, one module each, called from
the routing in `sharedcare/fhir/api.py`: `patch` (JSON Patch and FHIRPath Patch), `lastn`
(Observation/$lastn), `summary` (Patient/$summary), `openapi` (the OpenAPI 3.1 document), and
`http` (responses, `Prefer`, conditional reads) that they share with the API.

Every one of them reads through the governance policy and writes through the one write door
(`Governance.write`), so each request still makes exactly one audit event."""
