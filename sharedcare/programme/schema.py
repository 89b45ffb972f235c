"""The change programme's own records: champions and the design group, readiness
self-assessments and the case-study library. (Feedback lives in governance.schema.feedback,
because every page writes to it.)"""

from __future__ import annotations

from sqlalchemy import Column, Float, String, Table, Text

from ..store.schema import PK, metadata

champion = Table(
    "champion", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("username", String(64)),
    Column("ods", String(16)),
    Column("profession", String(64)),
    Column("group_name", String(32), nullable=False),  # clinical-champion | design-group
    Column("since", String(10)),
    Column("notes", Text),
    comment="Clinical champions and the design group.",
)

readiness_assessment = Table(
    "readiness_assessment", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("taken_on", String(10), nullable=False),
    Column("taken_by", String(64)),
    Column("answers", Text, nullable=False),  # JSON: element id -> bool
    Column("notes", Text),
    comment="Readiness self-assessments on the five themes, repeated over time.",
)

case_study = Table(
    "case_study", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("title", String(200), nullable=False),
    Column("place", String(200), nullable=False),
    Column("organisation", String(200)),
    Column("technology", String(200)),
    Column("themes", String(400)),  # space-separated readiness theme ids
    Column("status", String(32)),  # planned | in-progress | live | evaluated | stopped
    Column("summary", Text),
    Column("lat", Float),
    Column("lon", Float),
    comment="Places and projects implementing new technology, to learn from.",
)
