"""Real FHIR client libraries against the real server on a real socket (uvicorn).

fhirpy (SyncFHIRClient) and SMART's fhirclient, with the partner-system bearer token. Runs on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import httpx

from ..fhir._support import load_json, patient_file

MRN = "http://hospital.example.org/mrn"


def _load(base: str, token: str, prefix: str) -> dict:
    """POST one Synthea bundle over HTTP; return the server id of its Patient."""
    from sharedcare.loader import conditional_directory_creates

    bundle = conditional_directory_creates(load_json(patient_file(prefix)))
    r = httpx.post(f"{base}/fhir", json=bundle, headers={"Authorization": f"Bearer {token}"},
                   timeout=60)
    assert r.status_code == 200, r.text[:500]
    return next(e["response"]["location"].split("/")[1] for e in r.json()["entry"]
                if e["response"]["location"].startswith("Patient/"))


def test_fhirpy_create_search_chained_and_page_all(live_server, system_token):
    from fhirpy import SyncFHIRClient

    pid = _load(live_server, system_token, "Tom_Goodwin")
    client = SyncFHIRClient(f"{live_server}/fhir", authorization=f"Bearer {system_token}")

    pat = client.resource("Patient", identifier=[{"system": MRN, "value": "fhirpy-1"}],
                          name=[{"family": "Pyclient", "given": ["Fi"]}], birthDate="1990-01-01")
    pat.save()
    assert pat.id and pat["meta"]["versionId"] == "1"
    again = client.reference("Patient", pat.id).to_resource()
    assert again["name"][0]["family"] == "Pyclient"

    obs = client.resource("Observation", status="final", code={"text": "fhirpy obs"},
                          subject=pat.to_reference())
    obs.save()
    found = client.resources("Observation").search(
        subject__Patient__identifier=f"{MRN}|fhirpy-1").fetch_all()
    assert [o.id for o in found] == [obs.id]

    # chained search over Synthea data, paged 7 at a time by following next links
    tom = client.reference("Patient", pid).to_resource()
    ident = next(i for i in tom["identifier"] if i["system"].endswith("us-ssn"))
    paged = client.resources("Observation").search(
        subject__Patient__identifier=f"{ident['system']}|{ident['value']}").limit(7).fetch_all()
    every = client.resources("Observation").search(subject=f"Patient/{pid}").limit(1000).fetch()
    assert len(paged) == len(every) > 7
    assert sorted(o.id for o in paged) == sorted(o.id for o in every)
    # (fhirpy's .count() adds Aidbox's _totalMethod, which this strict server refuses as an
    # unknown parameter -- allowed by FHIR; _summary=count is the standard way)
    counted = client.execute("Observation", method="get",
                             params={"subject": f"Patient/{pid}", "_summary": "count"})
    assert counted["total"] == len(every)

    # conditional update through the client (PUT Type?identifier=...)
    pat["gender"] = "female"
    pat.save()
    assert client.reference("Patient", pat.id).to_resource()["gender"] == "female"


def test_fhirclient_read_and_search(live_server, system_token):
    from fhirclient import client
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient
    from fhirclient.server import FHIRServer

    pid = _load(live_server, system_token, "María_Luisa_Razo")
    base = f"{live_server}/fhir"

    smart = client.FHIRClient(settings={"app_id": "sharedcare-tests", "api_base": base})
    smart.server.session.headers["Authorization"] = f"Bearer {system_token}"
    pat = Patient.read(pid, smart.server)
    assert pat.id == pid and pat.name[0].family == "Razo"
    assert pat.birthDate.isostring == "1973-08-01"

    hits = list(Patient.where(struct={"family": "razo", "birthdate": "1973-08-01"})
                .perform_resources_iter(smart.server))
    assert [p.id for p in hits] == [pid]

    # a bare FHIRServer, and a search paged through next links
    server = FHIRServer(None, base)
    server.session.headers["Authorization"] = f"Bearer {system_token}"
    bundles = list(Observation.where(struct={"subject": f"Patient/{pid}", "_count": "10"})
                   .perform_iter(server))
    assert len(bundles) > 1
    got = [e.resource.id for b in bundles for e in (b.entry or [])]
    total = bundles[0].total
    assert len(got) == len(set(got)) == total > 10
    assert all(isinstance(e.resource, Observation) for b in bundles for e in b.entry or [])


def test_real_socket_rejects_missing_token(live_server):
    r = httpx.get(f"{live_server}/fhir/Patient")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert r.json()["resourceType"] == "OperationOutcome"
    assert httpx.get(f"{live_server}/fhir/metadata").status_code == 200
