"""Property test: every governed read path agrees with the independent oracle.

Each hypothesis example is a random care system (2-5 organisations, agreements in every state and
date window, patients with every kind of relationship, closed encounters, objections, opt-outs,
sensitivity labels, break-glass and declared relationships) loaded through the real product onto
a real database; then every (viewer, resource) pair is checked through read, decide, search (result
set and total), keyset paging, _include/_revinclude and every $everything page.
"""

from __future__ import annotations

import os
import uuid

import pytest
from gov_world import Tally, check_world, load, worlds
from hypothesis import HealthCheck, given, settings
from sqlalchemy import create_engine, text

from sharedcare.app import SharedCare

TALLY: dict[str, Tally] = {}
EXAMPLES = {"sqlite": int(os.environ.get("GOV_EXAMPLES", "30")),
            "postgresql": int(os.environ.get("GOV_PG_EXAMPLES", "6"))}


def fresh(database_url: str, tmp_path) -> SharedCare:
    """A new SharedCare on an empty database (a new SQLite file, or a wiped PG schema)."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / f'world-{uuid.uuid4().hex[:8]}.sqlite'}"
    else:
        url = database_url
        eng = create_engine(url)
        with eng.begin() as c:
            c.execute(text("DROP SCHEMA public CASCADE"))
            c.execute(text("CREATE SCHEMA public"))
        eng.dispose()
    return SharedCare.open(url, tmp_path / f"data-{uuid.uuid4().hex[:8]}")


def test_governed_reads_match_the_oracle(database_url, tmp_path):
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    tally = TALLY.setdefault(backend, Tally())

    @settings(max_examples=EXAMPLES[backend], deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(worlds())
    def prop(generated):
        world, viewers = generated
        sc = fresh(database_url, tmp_path)
        try:
            load(sc, world, viewers)
            local = Tally()
            check_world(sc, world, viewers, local)
            tally.checks.update(local.checks)
            assert not local.problems, "\n".join(local.problems[:25])
        finally:
            sc.engine.dispose()

    prop()
    print(f"\n[{backend}] oracle checks: {tally.total} "
          + ", ".join(f"{k}={v}" for k, v in sorted(tally.checks.items())))
    assert tally.total >= (10_000 if backend == "sqlite" else 1_000)
