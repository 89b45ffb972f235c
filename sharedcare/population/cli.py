"""`sharedcare population ...`: governed extracts for planning and research, from the shell.

    sharedcare population views
    sharedcare population extract --user U --role R [--org ODS] --purpose planning|research \
        --project P [--view NAME ...] [--coarsen month|year] --out DIR

The extract runs as that person in that role (they must hold it), through the same door as
every secondary use (``extract.run_extract``): agreements, objections, opt-outs, pseudonyms,
and one audit event. Problems print a clear message and exit with code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

population_app = typer.Typer(help="Population health: ready views and governed extracts for "
                                  "planning and research.", no_args_is_help=True)
console = Console(stderr=True)

# The same options as the main CLI (defined here too so this module never imports sharedcare.cli,
# which imports it).
DatabaseOpt = typer.Option(None, "--database", "-d", envvar="SHAREDCARE_DATABASE_URL",
                           help="Database URL (default: embedded SQLite in ./data).")
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHAREDCARE_DATA_DIR",
                          help="Folder for the embedded database and keys (default ./data).")


def _fail(message: str, reasons: list[str] = ()) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    for r in reasons:
        console.print(f"  - {r}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _open(database: str | None, data_dir: Path | None):
    from ..app import SharedCare

    return SharedCare.open(database, data_dir)


@population_app.command("views")
def views() -> None:
    """List the ready SQL-on-FHIR views an extract can use."""
    from .viewdef import ready_views

    for name, v in ready_views().items():
        cols = sum(len(s.get("column", [])) for s in v.get("select", []))
        print(f"{name:<24} {v.get('resource', ''):<20} {cols:>3} columns  "
              f"{v.get('description') or v.get('title') or ''}")


@population_app.command("extract")
def extract(user: str = typer.Option(..., "--user", help="Username of the person running it."),
            role: str = typer.Option(..., "--role", help="The role they run it in."),
            org: str = typer.Option(None, "--org", help="ODS code (needed if they hold the "
                                    "role at more than one organisation)."),
            purpose: str = typer.Option(..., "--purpose", help="planning or research."),
            project: str = typer.Option(..., "--project", help="Project name: pseudonyms are "
                                        "keyed per project."),
            view: list[str] = typer.Option(None, "--view", help="A ready view (repeatable; "
                                           "default: every ready view)."),
            coarsen: str = typer.Option("none", "--coarsen",
                                        help="Coarsen dates: none, month or year."),
            out: Path = typer.Option(..., "--out", help="Folder to write the extract into."),
            database: str = DatabaseOpt, data_dir: Path = DataDirOpt) -> None:
    """Run a governed, pseudonymised extract and write DuckDB + Parquet files."""
    from sqlalchemy import func, select

    from ..fhir.outcome import FHIRError
    from ..governance.policy import Access
    from ..governance.schema import patient_choice, staff
    from .extract import SECONDARY_PURPOSES, run_extract
    from .pseudonym import COARSENING
    from .viewdef import ready_views

    if purpose not in SECONDARY_PURPOSES:
        _fail(f"--purpose must be one of {', '.join(SECONDARY_PURPOSES)}, not '{purpose}'")
    if coarsen not in COARSENING:
        _fail(f"--coarsen must be one of {', '.join(COARSENING)}, not '{coarsen}'")
    ready = ready_views()
    names = list(dict.fromkeys(view)) if view else sorted(ready)
    unknown = [n for n in names if n not in ready]
    if unknown:
        _fail(f"unknown view{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
              [f"ready views: {', '.join(sorted(ready))}"])

    sc = _open(database, data_dir)
    gov = sc.governance
    with sc.engine.connect() as conn:
        person = conn.execute(select(staff.c.display_name, staff.c.active)
                              .where(staff.c.username == user)).first()
    if person is None or not person.active:
        _fail(f"no active account '{user}'")
    held = gov.roles_of(user)
    matching = [(o, n) for o, n, r in held if r == role and (org is None or o == org)]
    if not matching:
        where = f" at {org}" if org else ""
        _fail(f"{user} does not hold the {role} role{where}",
              [f"roles held: {', '.join(f'{r} at {o}' for o, _, r in held) or 'none'}"])
    if len(matching) > 1:
        _fail(f"{user} holds the {role} role at several organisations: name one with --org",
              [f"{o} ({n})" for o, n in matching])
    ods = matching[0][0]
    access = gov.prepare(Access(user, ods, role, purpose=purpose,
                                display_name=person.display_name))
    try:
        result = run_extract(sc, access, names, project=project, coarsen_dates=coarsen,
                             out_dir=out)
    except FHIRError as e:
        _fail(e.issues[0].diagnostics if e.issues else str(e),
              [i.diagnostics for i in e.issues[1:]])
    except (ValueError, KeyError) as e:
        _fail(str(e).strip("'\""))
    with sc.engine.connect() as conn:
        opted_out = conn.execute(select(func.count(func.distinct(patient_choice.c.patient_id)))
                                 .where(patient_choice.c.kind == "national-opt-out")).scalar()

    print(f"extract '{result.project}' for {ods} by {user} ({role})")
    print(f"purpose: {result.purpose}")
    print(f"agreements: {', '.join(result.agreements)}")
    print(f"controllers: {', '.join(result.controllers)}")
    print(f"dates coarsened to: {result.coarsen_dates}")
    print(f"patients removed for the national data opt-out: {opted_out}")
    print(f"resources read (de-identified): {result.resources}")
    print("tables:")
    for name in result.tables:
        print(f"  {name:<24} {result.rows[name]:>8} rows  {result.parquet[name]}")
    print(f"duckdb: {result.duckdb_path}")
    print(f"manifest: {result.manifest_path}")
    if result.audit_seq:
        print(f"audit event: {result.audit_seq}")


__all__ = ["population_app"]
