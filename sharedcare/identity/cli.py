"""`sharedcare identity ...`: the identity work a person does from the command line.

Every command acts as a named member of staff in a role (``--user``, ``--role``, ``--org`` as for
``admin token``); every link, unlink, confirmation and rejection is one ``AuditEvent`` committed
with the change, and carries its reason. The same operations are functions of
:class:`sharedcare.identity.service.IdentityService` (``link``, ``unlink``, ``confirm``,
``reject``, ``review_queue``, ``explain_link``) for the web pages.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import typer

identity_app = typer.Typer(help="One identity per person: review possible matches, link and "
                                "unlink records.", no_args_is_help=True)

IDENTITY_ROLES = ("admin", "sysadmin", "ig-lead")
DatabaseOpt = typer.Option(None, "--database", "-d", envvar="SHAREDCARE_DATABASE_URL",
                           help="Database URL (default: embedded SQLite in ./data).")
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHAREDCARE_DATA_DIR",
                          help="Folder for the embedded database and keys (default ./data).")
UserOpt = typer.Option(..., "--user", help="Your staff username (the audit names you).")
RoleOpt = typer.Option("admin", "--role", help=f"Your role: one of {', '.join(IDENTITY_ROLES)}.")
OrgOpt = typer.Option(None, "--org", help="ODS code, if you hold the role at several.")
ReasonOpt = typer.Option(..., "--reason", help="Why (kept with the link and in the audit).")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _session(database, data_dir, user, role, org):
    """(SharedCare, IdentityService, Access) for a member of staff in an identity role."""
    from ..app import SharedCare
    from ..governance.policy import Access
    from .service import IdentityService

    sc = SharedCare.open(database, data_dir)
    if role not in IDENTITY_ROLES:
        _fail(f"identity work needs one of the roles {', '.join(IDENTITY_ROLES)}, not {role}")
    orgs = [o for o, _, r in sc.governance.roles_of(user) if r == role and org in (None, o)]
    if not orgs:
        _fail(f"{user} holds no {role} role" + (f" at {org}" if org else ""))
    if len(orgs) > 1:
        _fail(f"{user} is {role} at several organisations ({', '.join(orgs)}): pass --org")
    access = sc.governance.prepare(Access(user, orgs[0], role))
    return sc, IdentityService.of(sc), access


def _run(fn):
    from ..fhir.outcome import FHIRError

    try:
        return fn()
    except FHIRError as e:
        _fail(str(e))


@identity_app.command("review")
def review(user: str = UserOpt, role: str = RoleOpt, org: str = OrgOpt,
           as_json: bool = typer.Option(False, "--json", help="JSON instead of a table."),
           database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """The queue of possible matches, oldest first, with the evidence: which fields agreed and
    the match weight."""
    sc, identity, access = _session(database, data_dir, user, role, org)
    queue = identity.review_queue()
    sc.governance.audit(access, "identity-review", "0", entity="identity review queue")
    if as_json:
        typer.echo(orjson.dumps([r.__dict__ for r in queue], option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("task", "record", "candidate", "p", "weight", "grade", "evidence",
              title=f"{len(queue)} possible match(es) to review")
    for r in queue:
        evidence = "\n".join(f"{k}: {v}" for k, v in r.fields.items())
        t.add_row(r.task_id, f"Patient/{r.patient_id} ({r.patient_source})",
                  f"Patient/{r.candidate_id} ({r.candidate_source})",
                  f"{r.probability:.3f}" if r.probability is not None else "-",
                  f"{r.match_weight:.1f}" if r.match_weight is not None else "-",
                  r.grade or "-", evidence)
    Console(width=200).print(t)
    typer.echo("decide with: sharedcare identity confirm TASK | reject TASK")


@identity_app.command("link")
def link(patient_a: str, patient_b: str, reason: str = ReasonOpt, user: str = UserOpt,
         role: str = RoleOpt, org: str = OrgOpt, database: str = DatabaseOpt,
         data_dir: Path = DataDirOpt):
    """Record that two patient records are one person (reversible with unlink)."""
    _, identity, access = _session(database, data_dir, user, role, org)
    person = _run(lambda: identity.link(access, patient_a, patient_b, reason))
    typer.echo(f"linked Patient/{patient_a} and Patient/{patient_b}: Person/{person}")


@identity_app.command("unlink")
def unlink(patient: str, reason: str = ReasonOpt, user: str = UserOpt, role: str = RoleOpt,
           org: str = OrgOpt, database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Take a patient record out of the person it is linked to (it gets a Person of its own)."""
    _, identity, access = _session(database, data_dir, user, role, org)
    person = _run(lambda: identity.unlink(access, patient, reason))
    typer.echo(f"unlinked Patient/{patient}: now Person/{person}")


@identity_app.command("confirm")
def confirm(task: str, reason: str = typer.Option(None, "--reason"), user: str = UserOpt,
            role: str = RoleOpt, org: str = OrgOpt, database: str = DatabaseOpt,
            data_dir: Path = DataDirOpt):
    """Close a review: the two records are the same person (they are linked)."""
    _, identity, access = _session(database, data_dir, user, role, org)
    person = _run(lambda: identity.confirm(access, task, reason))
    typer.echo(f"Task/{task}: same person, Person/{person}")


@identity_app.command("reject")
def reject(task: str, reason: str = typer.Option(None, "--reason"), user: str = UserOpt,
           role: str = RoleOpt, org: str = OrgOpt, database: str = DatabaseOpt,
           data_dir: Path = DataDirOpt):
    """Close a review: the two records are different people (never proposed again)."""
    _, identity, access = _session(database, data_dir, user, role, org)
    _run(lambda: identity.reject(access, task, reason))
    typer.echo(f"Task/{task}: different people")


@identity_app.command("explain")
def explain(patient: str, user: str = UserOpt, role: str = RoleOpt, org: str = OrgOpt,
            database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Which Person a patient record belongs to, and how and why each record joined it."""
    sc, identity, access = _session(database, data_dir, user, role, org)
    out = identity.explain_link(patient)
    sc.governance.audit(access, "identity-explain", "0", patient_id=patient, entity="Person")
    typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


@identity_app.command("resolve")
def resolve(user: str = UserOpt, role: str = RoleOpt, org: str = OrgOpt,
            database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Work through the identity queue now (the server's worker does this by itself)."""
    from .worker import IdentityWorker

    sc, _, access = _session(database, data_dir, user, role, org)
    n = IdentityWorker(sc).drain(timeout=3600)
    sc.governance.audit(access, "identity-resolve", "0", entity="identity queue")
    typer.echo(f"{n} queued patient(s) resolved")
