"""Writers side by side on one resource: PostgreSQL runs them concurrently, so two may read the
same current version. Each write must still land as its own next version, never as a failure
(a 500 to a client, a NACK to a feed), and no version may be lost."""

from __future__ import annotations

import threading

from sharedcare.store.repository import PermitAll, WriteOp


def test_concurrent_updates_of_one_resource_each_get_their_own_version(sc):
    store = sc.store
    store.write([WriteOp("PUT", "Organization", "busy", {"resourceType": "Organization",
                                                          "name": "v0"})])
    errors: list[Exception] = []
    start = threading.Barrier(4)

    def writer(n: int) -> None:
        start.wait()
        for i in range(15):
            try:
                store.write([WriteOp("PUT", "Organization", "busy", {
                    "resourceType": "Organization", "name": f"writer {n} write {i}"})])
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    current = store.read("Organization", "busy", PermitAll())
    assert current.version == 1 + 4 * 15
    history, _ = store.history(PermitAll(), "Organization", "busy", count=100)
    assert sorted(s.version for _, s, _ in history) == list(range(1, 62))
