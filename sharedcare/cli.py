"""`sharedcare`: the front door. Serve, load, migrate, administer, verify the audit trail."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.table import Table


class _FrontDoor(typer.Typer):
    """The command line: a database that cannot be used is one clear line, not a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only database errors are answered here
            message = database_problem(e, _database_argument(sys.argv[1:]))
            if message is None:
                raise
            Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False,
                                       soft_wrap=True)
            sys.exit(2)


def _database_argument(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a in ("--database", "-d") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--database="):
            return a.split("=", 1)[1]
    return None


app = _FrontDoor(help="sharedcare: an open shared care record (FHIR R4).", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.")
admin_app = typer.Typer(help="Organisations, staff, agreements, patient choices and tokens.")
audit_app = typer.Typer(help="The audit trail.")
feeds_app = typer.Typer(help="Partner feeds: FHIR, HL7 v2 over MLLP, CSV.")
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(audit_app, name="audit")
app.add_typer(feeds_app, name="feeds")


def _population_app() -> typer.Typer:
    from .population.cli import population_app

    return population_app


app.add_typer(_population_app(), name="population")
app.add_typer(__import__("sharedcare.identity.cli", fromlist=["x"]).identity_app, name="identity")
app.add_typer(__import__("sharedcare.notify.cli", fromlist=["x"]).notify_app, name="notify")
console = Console(stderr=True)

DatabaseOpt = typer.Option(None, "--database", "-d", envvar="SHAREDCARE_DATABASE_URL",
                           help="Database URL (default: embedded SQLite in ./data).")
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHAREDCARE_DATA_DIR",
                          help="Folder for the embedded database and keys (default ./data).")


def _open(database: str | None, data_dir: Path | None):
    from .app import SharedCare

    try:
        return SharedCare.open(database, data_dir)
    except Exception as e:  # noqa: BLE001 - only database errors are answered here
        message = database_problem(e, database)
        if message is None:
            raise
        fail(message)


def database_problem(e: BaseException, database: str | None) -> str | None:
    """One line saying what is wrong with the database URL or server (not 450 lines of
    traceback with the cause at the bottom); None when `e` is not a database problem."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from .store.db import database_url

    try:
        shown = make_url(database_url(database, None)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - the URL itself cannot be read
        shown = "the database URL"
    if isinstance(e, NoSuchModuleError):
        return (f"cannot use {shown}: unknown kind of database (use sqlite:///FILE or "
                "postgresql://USER@HOST:PORT/NAME)")
    if isinstance(e, ArgumentError):
        return (f"cannot use {shown}: not a database URL (use sqlite:///FILE or "
                "postgresql://USER@HOST:PORT/NAME)")
    if isinstance(e, DBAPIError):
        cause = str(e.orig or e).strip().splitlines()
        first = next((ln.strip() for ln in cause if ln.strip()), type(e).__name__)
        return f"cannot open the database {shown}: {first}"
    return None


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def serve(database: str = DatabaseOpt, data_dir: Path = DataDirOpt,
          host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
          port: int = typer.Option(8000, help="HTTP port."),
          mllp_port: int = typer.Option(None, help="Also listen for HL7 v2 over MLLP here."),
          workers: int = typer.Option(1, help="Worker processes (one per core suits PostgreSQL)."),
          read_database: str = typer.Option(
              None, "--read-database", envvar="SHAREDCARE_DATABASE_READ_URL",
              help="A PostgreSQL streaming replica for searches, history, $everything and "
                   "exports (read-your-writes kept)."),
          redis_url: str = typer.Option(
              None, "--redis-url", envvar="SHAREDCARE_REDIS_URL",
              help="Keep sign-ins, one-time codes and export jobs in Redis, not the database."),
          export_dir: Path = typer.Option(
              None, "--export-dir", envvar="SHAREDCARE_EXPORT_DIR",
              help="Bulk export files: a folder every server shares (default <data dir>/exports).")):
    """Serve the FHIR API (/fhir) and the web pages. Several servers (or --workers) on one
    PostgreSQL database share everything a request may need from an earlier one."""
    import uvicorn

    from .app import create_app, settle_heap

    # Through the environment, so that every worker process opens the same (see app_from_env).
    for name, value in (("SHAREDCARE_DATABASE_READ_URL", read_database),
                        ("SHAREDCARE_REDIS_URL", redis_url),
                        ("SHAREDCARE_EXPORT_DIR", str(export_dir) if export_dir else None)):
        if value:
            os.environ[name] = value
    sc = _open(database, data_dir)
    _warn_audit_key(sc)
    console.print(f"sharedcare on http://{host}:{port}/  (FHIR base http://{host}:{port}/fhir)")
    if workers > 1:
        if mllp_port:
            fail("--mllp-port runs in a single-worker server; run the MLLP listener on its own "
                 "(python -m sharedcare.feeds.mllp_server) beside a multi-worker server")
        # Each worker opens the same database and keys (schema already upgraded above).
        os.environ["SHAREDCARE_DATABASE_URL"] = str(sc.engine.url.render_as_string(
            hide_password=False))
        os.environ["SHAREDCARE_DATA_DIR"] = str(sc.data_dir.resolve())
        uvicorn.run("sharedcare.app:app_from_env", factory=True, workers=workers, host=host,
                    port=port, log_level="warning", access_log=False)
        return
    application = create_app(sc)
    if mllp_port:
        from .feeds.service import attach_mllp

        attach_mllp(application, sc, host, mllp_port)
    settle_heap()
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)


@app.command()
def load(paths: list[Path] = typer.Argument(..., help="Bundle JSON, NDJSON, or folders of them."),
         database: str = DatabaseOpt, data_dir: Path = DataDirOpt,
         source_org: str = typer.Option(None, help="ODS code of the organisation that controls "
                                        "this data (stamped on resources without one)."),
         batch: int = typer.Option(500, help="Resources per transaction for NDJSON.")):
    """Load FHIR data: each Bundle is one transaction; rejected files are reported, the rest load.
    Loading again (after it finished, or was killed part-way) adds nothing already loaded."""
    from .loader import Loader

    sc = _open(database, data_dir)
    loader = Loader(sc.store, source_org=source_org, batch=batch)
    files = loader.files(paths)
    if not files:
        fail("no .json or .ndjson files found in " + ", ".join(map(str, paths)))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), console=console) as progress:
        task = progress.add_task("loading", total=len(files), rate="")
        for f in files:
            loader.load_file(f)
            elapsed = time.perf_counter() - start
            progress.update(task, advance=1,
                            rate=f"{loader.loaded / elapsed:,.0f} resources/s" if elapsed else "")
    elapsed = time.perf_counter() - start
    for where, problem in loader.rejected:
        console.print(f"[red]rejected[/red] {where}: {problem}")
    print(f"loaded {loader.loaded} resources from {len(files) - len(loader.rejected_files)} "
          f"files in {elapsed:.1f}s ({loader.loaded / max(elapsed, 1e-9):,.0f} resources/s); "
          f"{len(loader.rejected)} rejected"
          + (f"; {loader.skipped} already loaded (skipped)" if loader.skipped else ""))
    if loader.rejected:
        raise typer.Exit(1)


@app.command()
def demo(patients: int = typer.Option(2000, help="How many synthetic patients."),
         seed: int = typer.Option(42, help="Seed: the same seed gives the same care system."),
         data_dir: Path = typer.Option(Path("demo-data"), envvar="SHAREDCARE_DATA_DIR",
                                       help="Folder for the demo's SQLite database and keys."),
         host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
         fresh: bool = typer.Option(False, help="Delete the demo database and build it again."),
         serve_it: bool = typer.Option(True, "--serve/--no-serve", help="Serve it when built.")):
    """Build (once) and serve a synthetic integrated care system on embedded SQLite."""
    import shutil

    if patients <= 0:  # checked before anything is deleted or made
        fail(f"--patients must be a whole number above 0, not {patients}")
    if not 1 <= port <= 65535:
        fail(f"--port must be between 1 and 65535, not {port}")

    from .demo import generate
    from .demo.load import already_loaded, load_demo

    if fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    sc = _open(f"sqlite:///{(data_dir / 'sharedcare.sqlite').resolve()}", data_dir)
    cs = generate(seed, patients)
    seeded = already_loaded(sc)
    if seeded and seeded != f"{seed}:{patients}":
        fail(f"{data_dir} holds a demo built with seed:patients {seeded}; use --fresh to rebuild")
    if not seeded:
        start = time.perf_counter()
        with console.status("building the demo care system") as status:
            load_demo(sc, cs, lambda what, n: status.update(f"loading {what}: {n:,}"))
        console.print(f"demo built in {time.perf_counter() - start:.0f}s")
    t = Table(title="Sign in as")
    for name in ("persona", "username", "password", "organisation"):
        t.add_column(name, no_wrap=True)
    for p in cs.personas:
        t.add_row(p.role, p.username, p.password, p.org or "-")
    Console(width=120).print(t)
    featured = next((p for p in cs.personas if p.nhs_number), None)
    if featured:
        n = featured.nhs_number
        print(f"Featured patient: NHS number {n[:3]} {n[3:6]} {n[6:]} (find them by it)")
    print(f"sharedcare demo ({cs.icb_name}, {patients:,} patients): http://{host}:{port}/")
    if serve_it:
        import uvicorn

        from .app import create_app

        uvicorn.run(create_app(sc), host=host, port=port, log_level="warning", access_log=False)


@db_app.command("upgrade")
def db_upgrade(database: str = DatabaseOpt):
    """Create or upgrade the schema to the latest version."""
    from .store import migrate
    from .store.db import make_engine

    engine = make_engine(database)
    migrate.upgrade(engine)
    print(f"database at revision {', '.join(migrate.current(engine)) or 'none'}")


def _warn_audit_key(sc) -> None:
    """Say so when the audit key sits inside the data directory, beside the database."""
    from .governance.audit import key_warning

    trail = sc.governance.audit_trail
    warning = trail.key_file and key_warning(trail.key_file, sc.data_dir)
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)


def _checkpoints(paths: list[Path] | None):
    """Checkpoints from --checkpoint, else from $SHAREDCARE_AUDIT_CHECKPOINT_DIR when it holds
    any; an unreadable one stops the command (exit 2) naming the file and line."""
    from .governance.audit import ENV_CHECKPOINT_DIR, CheckpointError, read_checkpoints

    if not paths:
        folder = os.environ.get(ENV_CHECKPOINT_DIR)
        if not folder or not any(Path(folder).expanduser().glob("*.json*")):
            return []
        paths = [Path(folder).expanduser()]
    try:
        return read_checkpoints(paths)
    except CheckpointError as e:
        console.print(f"[red]error:[/red] checkpoint {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@audit_app.command("verify")
def audit_verify(database: str = DatabaseOpt, data_dir: Path = DataDirOpt,
                 checkpoint: list[Path] = typer.Option(
                     None, "--checkpoint", "-c",
                     help="A checkpoint file, or a directory of them, made by `audit checkpoint` "
                          "or the server (repeatable; default $SHAREDCARE_AUDIT_CHECKPOINT_DIR).")):
    """Check the audit trail's hash chain, and that it still holds everything each checkpoint
    recorded: any edit, deletion, insertion, reordering, truncation or rollback shows."""
    from .governance.audit import events

    sc = _open(database, data_dir)
    _warn_audit_key(sc)
    report = sc.governance.audit_trail.report(_checkpoints(checkpoint))
    if report.problems:
        for p in report.problems:
            print(f"TAMPERED {p}")
        if not report.checkpoints:
            print("(no checkpoint kept outside the database was checked: without one, a rollback "
                  "to an older copy cannot be seen and the number of lost events cannot be told; "
                  "keep them with `sharedcare audit checkpoint --out FILE`)")
        raise typer.Exit(1)
    if report.newest:
        print(f"audit trail intact up to checkpoint {report.newest.describe()} and "
              f"{events(report.after_newest)} after it ({report.checkpoints} checkpoints checked)")
    else:
        print(f"audit trail intact: {events(report.events)}. No checkpoint was given, so this "
              "shows only that the database agrees with itself; a rollback to an older copy "
              "of the database would pass. Keep checkpoints outside it (`sharedcare audit "
              "checkpoint --out FILE`, or SHAREDCARE_AUDIT_CHECKPOINT_DIR for the server) and "
              "verify with --checkpoint.")


@audit_app.command("checkpoint")
def audit_checkpoint(out: Path = typer.Option(..., "--out", "-o",
                                              help="File to append the checkpoint to (kept by "
                                                   "the IG lead, away from the server); - "
                                                   "prints it."),
                     database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Sign the trail's head (newest event, its hash and time, the number of events) with the
    audit key and write it outside the database, after checking the chain is intact."""
    from .governance.audit import append_checkpoint, events

    sc = _open(database, data_dir)
    _warn_audit_key(sc)
    trail = sc.governance.audit_trail
    problems = trail.verify()
    if problems:
        for p in problems:
            print(f"TAMPERED {p}")
        print("no checkpoint written: a checkpoint must not vouch for a tampered trail")
        raise typer.Exit(1)
    cp = trail.checkpoint()
    if str(out) == "-":
        sys.stdout.write(cp.to_json().decode() + "\n")
        return
    try:
        append_checkpoint(out, cp)
    except OSError as e:
        fail(f"cannot write the checkpoint to {out}: {e.strerror}")
    print(f"checkpoint of {events(cp.count)} up to event {cp.seq} written to {out}")


@admin_app.command("token")
def admin_token(user: str = typer.Option(..., "--user"), role: str = typer.Option(..., "--role"),
                org: str = typer.Option(None, "--org", help="ODS code (needed if the person "
                                        "holds the role at several organisations)."),
                scope: str = typer.Option("user/*.cruds"),
                minutes: int = typer.Option(60),
                database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Print an access token for scripted access as a person in a role (audited like any use)."""
    from .fhir.outcome import FHIRError

    sc = _open(database, data_dir)
    orgs = [o for o, _, r in sc.governance.roles_of(user) if r == role and (org in (None, o))]
    if not orgs:
        fail(f"{user} holds no {role} role" + (f" at {org}" if org else ""))
    if len(orgs) > 1:
        fail(f"{user} is {role} at several organisations ({', '.join(orgs)}): pass --org")
    try:
        token = sc.governance.issue_token(user, orgs[0], role, scope=scope, lifetime=minutes * 60)
    except FHIRError as e:
        fail(str(e))
    from .governance.policy import Access

    sc.governance.audit(sc.governance.prepare(Access(user, orgs[0], role)), "login", "0",
                        entity="admin token")
    print(token)


@admin_app.command("org")
def admin_org(ods: str, name: str, kind: str, postcode: str = typer.Option(None),
              database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Add or replace an organisation."""
    from .governance.schema import ORG_KINDS

    if kind not in ORG_KINDS:
        fail(f"kind must be one of {', '.join(ORG_KINDS)}")
    _open(database, data_dir).governance.add_organisation(ods, name, kind, postcode=postcode)
    print(f"organisation {ods} saved")


@admin_app.command("staff")
def admin_staff(username: str, name: str,
                role: list[str] = typer.Option(..., help="ODS:ROLE, repeatable"),
                password: str = typer.Option(None, prompt=True, hide_input=True,
                                             confirmation_prompt=True),
                sds_id: str = typer.Option(None, "--sds-id", help="The person's SDS user id "
                                           "(smartcard): how a partner EPR's launch finds the "
                                           "account."),
                database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Add or replace a staff account with its roles."""
    from .governance.policy import ROLES

    roles = []
    for r in role:
        ods, _, rname = r.partition(":")
        if rname not in ROLES:
            fail(f"--role {r}: role must be one of {', '.join(ROLES)}")
        roles.append((ods, rname))
    extra = {"sds_id": sds_id} if sds_id else {}
    _open(database, data_dir).governance.add_staff(username, name, roles, password or None,
                                                   **extra)
    print(f"staff {username} saved with {len(roles)} role(s)")


@admin_app.command("choice")
def admin_choice(patient_id: str, kind: str, org: str = typer.Option(None),
                 database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Record a patient's choice: objection-all | objection-from | objection-to | national-opt-out."""
    try:
        _open(database, data_dir).governance.record_choice(patient_id, kind, org)
    except ValueError as e:
        fail(str(e))
    print(f"recorded {kind} for Patient/{patient_id}")


@admin_app.command("client")
def admin_client(client_id: str, name: str,
                 org: str = typer.Option(None, help="ODS code the client acts for (partner "
                                         "systems using client_credentials need one)."),
                 scope: str = typer.Option(..., help="The most it may be granted, e.g. "
                                           "'system/*.rs' or 'user/*.rs patient/*.rs launch/patient'."),
                 redirect_uri: list[str] = typer.Option([], help="Apps: exact redirect URI(s)."),
                 jwks: Path = typer.Option(None, help="Confidential clients: JWK Set (public "
                                           "keys) for private_key_jwt."),
                 purpose: str = typer.Option("direct-care"),
                 launch_url: str = typer.Option(None, help="Apps sharedcare launches (EHR "
                                                "launch): the app's launch URL; the patient "
                                                "view then offers 'Open in NAME'. Needs the "
                                                "'launch' scope."),
                 database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Register a SMART on FHIR client: an app acting for a user, or a partner system."""
    from .governance.smart import register_client

    if jwks is not None and not jwks.is_file():
        fail(f"--jwks {jwks}: there is no such file. Make a key pair for the partner system "
             f"with 'sharedcare admin keygen {client_id}' and register the public key set it "
             "writes")
    try:
        keys = orjson.loads(jwks.read_bytes()) if jwks else None
        register_client(_open(database, data_dir).engine, client_id, name, ods=org,
                        redirect_uris=redirect_uri, jwks=keys, scopes=scope, purpose=purpose,
                        public=keys is None, launch_url=launch_url)
    except (OSError, orjson.JSONDecodeError, ValueError) as e:
        fail(str(e))
    print(f"client {client_id} registered ({'confidential' if jwks else 'public'})")


@admin_app.command("keygen")
def admin_keygen(client_id: str = typer.Argument(..., help="The partner system's client id."),
                 out_dir: Path = typer.Option(Path("."), "--out-dir",
                                              help="Where to write the two files."),
                 alg: str = typer.Option("ES384", help="ES384 (default) or RS384."),
                 force: bool = typer.Option(False, help="Overwrite existing files.")):
    """Make a key pair for a partner system's private_key_jwt sign-in: the private key (a JWK,
    mode 0600) stays with the partner; the public JWK Set is registered with
    'sharedcare admin client ... --jwks'."""
    import secrets

    from joserfc.jwk import ECKey, RSAKey

    if alg not in ("ES384", "RS384"):
        fail(f"--alg must be ES384 or RS384, not {alg}")
    if not client_id or not all(c.isalnum() or c in "-_." for c in client_id):
        fail(f"the client id {client_id!r} may only use letters, digits, '-', '_' and '.'")
    private_path = out_dir / f"{client_id}-private-key.json"
    public_path = out_dir / f"{client_id}-jwks.json"
    for path in (private_path, public_path):
        if path.exists() and not force:
            fail(f"{path} already exists; use --force to replace it")
    params = {"kid": f"{client_id}-{secrets.token_hex(4)}", "alg": alg, "use": "sig"}
    key = (ECKey.generate_key("P-384", parameters=params, private=True) if alg == "ES384"
           else RSAKey.generate_key(3072, parameters=params, private=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(key.as_dict(private=True), option=orjson.OPT_INDENT_2))
    os.chmod(private_path, 0o600)
    public_path.write_bytes(orjson.dumps({"keys": [key.as_dict(private=False)]},
                                         option=orjson.OPT_INDENT_2))
    print(f"private key: {private_path} (mode 600) -- give it to the partner system only; it "
          "signs its client assertions")
    print(f"public key set: {public_path} -- register it:")
    print(f"  sharedcare admin client {client_id} \"NAME\" --org ODS --scope 'system/*.rs' "
          f"--jwks {public_path}")


epr_app = typer.Typer(help="Partner EPRs allowed to launch sharedcare (SMART EHR launch).")
admin_app.add_typer(epr_app, name="epr")


@epr_app.command("add")
def admin_epr_add(iss: str = typer.Argument(..., help="The EPR's FHIR base URL, as it sends "
                                            "it in iss."),
                  name: str = typer.Option(..., help="What staff call the EPR."),
                  org: str = typer.Option(..., help="ODS code of the organisation the EPR "
                                          "belongs to: its users' roles there are used."),
                  client_id: str = typer.Option(..., help="sharedcare's client id at the EPR."),
                  client_secret: str = typer.Option(
                      None, envvar="SHAREDCARE_EPR_CLIENT_SECRET", show_default=False,
                      help="sharedcare's secret at the EPR ($SHAREDCARE_EPR_CLIENT_SECRET, or "
                      "prompted when no --private-key is given; empty for a public client)."),
                  private_key: Path = typer.Option(
                      None, help="Instead of a secret: sharedcare's private key file for "
                      "private_key_jwt at the EPR (from 'sharedcare admin keygen'; the EPR "
                      "registers the public JWK Set)."),
                  match: str = typer.Option("sds-user-id", help="How the EPR's user becomes a "
                                            "staff account: sds-user-id (the fhirUser "
                                            "Practitioner's SDS user id = the account's SDS id) "
                                            "or preferred-username (= the account's username)."),
                  scope: str = typer.Option(None, help="Scopes asked of the EPR (default "
                                            "'launch openid fhirUser patient/Patient.read')."),
                  database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Allow a partner EPR to open the shared record in its patient's context (GET /launch)."""
    from .governance.ehr_launch import DEFAULT_SCOPE, register_epr

    sc = _open(database, data_dir)
    from sqlalchemy import select

    from .governance.schema import organisation

    with sc.engine.connect() as conn:
        if conn.execute(select(organisation.c.ods).where(organisation.c.ods == org)).first() \
                is None:
            fail(f"--org {org}: no such organisation; add it with 'sharedcare admin org'")
    if client_secret is None and private_key is None:
        client_secret = typer.prompt("Client secret (empty for a public client)", default="",
                                     hide_input=True, show_default=False)
    try:
        epr = register_epr(sc.engine, iss, name, ods=org, client_id=client_id,
                           client_secret=client_secret or None, user_match=match,
                           scope=scope or DEFAULT_SCOPE,
                           private_key_file=str(private_key) if private_key else None,
                           sealer=sc.sealer)
    except ValueError as e:
        fail(str(e))
    print(f"EPR {epr.name} ({epr.ods}) may launch sharedcare: iss {epr.iss}, users matched by "
          f"{epr.user_match}")
    print("  its launch URL for sharedcare: <sharedcare public URL>/launch "
          "(it adds ?iss=...&launch=...)")


@epr_app.command("list")
def admin_epr_list(database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """List the partner EPRs allowed to launch sharedcare (never their secrets)."""
    from .governance.ehr_launch import list_eprs

    t = Table("iss", "name", "org", "client id", "authenticates", "match", "scope")
    for e in list_eprs(_open(database, data_dir).engine):
        auth = ("private key " + e.private_key_file if e.private_key_file
                else "secret" if e.client_secret else "public client")
        t.add_row(e.iss, e.name, e.ods, e.client_id, auth, e.user_match, e.scope)
    Console().print(t)


@epr_app.command("remove")
def admin_epr_remove(iss: str, database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Stop a partner EPR launching sharedcare."""
    from .governance.ehr_launch import remove_epr

    if not remove_epr(_open(database, data_dir).engine, iss):
        fail(f"no EPR registered with iss {iss}")
    print(f"EPR {iss} removed")


@admin_app.command("agreements")
def admin_agreements(database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """List sharing agreements."""
    from sqlalchemy import select

    from .governance.schema import agreement, agreement_party

    sc = _open(database, data_dir)
    t = Table("id", "title", "status", "purposes", "parties")
    with sc.engine.connect() as conn:
        for a in conn.execute(select(agreement)).mappings():
            parties = [p for (p,) in conn.execute(select(agreement_party.c.ods).where(
                agreement_party.c.agreement_id == a["id"]))]
            t.add_row(a["id"], a["title"], a["status"], a["purposes"], " ".join(parties))
    Console().print(t)


@feeds_app.command("list")
def feeds_list(ods: str = typer.Option(None, help="Only this organisation's feeds."),
               database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """List feeds with their status."""
    from .feeds.service import FeedService

    t = Table("feed", "organisation", "kind", "status", "meta.source")
    for f in FeedService(_open(database, data_dir)).list_feeds(ods):
        t.add_row(f.feed_id, f.ods, f.kind, f.status, f.source)
    Console().print(t)


@feeds_app.command("add")
def feeds_add(ods: str, feed_id: str, kind: str,
              mapping: Path = typer.Option(None, help="CSV feeds: the JSON mapping file."),
              status: str = typer.Option("onboarding"),
              database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Add a feed: KIND is fhir, hl7v2 or csv."""
    from .feeds.service import FeedService

    try:
        spec = orjson.loads(mapping.read_bytes()) if mapping else None
    except (OSError, orjson.JSONDecodeError) as e:
        fail(f"--mapping {mapping}: {e}")
    try:
        FeedService(_open(database, data_dir)).add_feed(ods, feed_id, kind, spec, status)
    except ValueError as e:
        fail(str(e))
    print(f"feed {feed_id} ({kind}) for {ods}: {status}")


@feeds_app.command("pause")
def feeds_pause(feed_id: str, database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Pause a feed: its messages are refused with a reason until it is live again."""
    _set_feed_status(feed_id, "paused", database, data_dir)


@feeds_app.command("live")
def feeds_live(feed_id: str, database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Make a feed live."""
    _set_feed_status(feed_id, "live", database, data_dir)


def _set_feed_status(feed_id: str, status: str, database, data_dir) -> None:
    from .feeds.service import FeedService

    try:
        FeedService(_open(database, data_dir)).set_status(feed_id, status)
    except (ValueError, KeyError, LookupError) as e:
        fail(str(e))
    print(f"feed {feed_id}: {status}")


@feeds_app.command("quality")
def feeds_quality(ods: str, database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """How good a partner's data is: NHS numbers, missing fields, rejects, stale feeds (JSON)."""
    from .feeds.service import FeedService

    report = FeedService(_open(database, data_dir)).quality_report(ods)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


@feeds_app.command("csv")
def feeds_csv(feed_id: str, path: Path, check: bool = typer.Option(
        False, "--check", help="Only validate; report every rejected row."),
        database: str = DatabaseOpt, data_dir: Path = DataDirOpt):
    """Validate and load a CSV file through a CSV feed's declared mapping."""
    from .feeds.csv_feed import validate
    from .feeds.service import FeedService

    svc = FeedService(_open(database, data_dir))
    try:
        if check:
            feed = svc.get_feed(feed_id)
            errors, loaded = validate(path, feed.mapping or {}, feed.ods, feed_id), 0
        else:
            report = svc.ingest_csv(path, feed_id)
            errors, loaded = report.rejected, report.loaded_rows
    except (ValueError, LookupError, OSError) as e:
        fail(str(e))
    for err in errors:
        print(f"{path}: {err}")
    print(f"{loaded} rows loaded, {len(errors)} rejected")
    if errors:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
