"""`sharedcare notify ...`: organisations' subscriptions, undelivered notifications, the worker.

    sharedcare notify topics
    sharedcare notify subscribe P89999 --topic admission --topic discharge --topic death \
        --channel rest-hook --endpoint https://gp.example/hooks/sharedcare
    sharedcare notify subscribe P89999 --topic admission --channel email --endpoint gp@example.org
    sharedcare notify subscribe P89999 --topic discharge --channel inbox --scope caseload
    sharedcare notify list [--org P89999]
    sharedcare notify off <subscription-id>     (and: on)
    sharedcare notify dead-letters [--org P89999]
    sharedcare notify retry <subscription-id>   (every dead letter of it goes out again)
    sharedcare notify status <subscription-id>  (its SubscriptionStatus, as $status answers)
    sharedcare notify run                       (the delivery worker alone, for a process of
                                                 its own; the server runs one already)
"""

from __future__ import annotations

from pathlib import Path

import typer

notify_app = typer.Typer(help="Event notifications: subscriptions, undelivered notifications, "
                              "the delivery worker.", no_args_is_help=True)

DatabaseOpt = typer.Option(None, "--database", "-d", envvar="SHAREDCARE_DATABASE_URL",
                           help="Database URL (default: embedded SQLite in ./data).")
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHAREDCARE_DATA_DIR",
                          help="Folder for the embedded database and keys (default ./data).")

TopicOpt = typer.Option(..., "--topic", help="admission, discharge, death, emergency, result, "
                        "care-plan, document ... (repeat)")
HeaderOpt = typer.Option(None, "--header", help="'Name: value' sent with each rest-hook POST "
                         "(repeat).")


def _open(database, data_dir):
    from ..app import SharedCare

    return SharedCare.open(database, data_dir)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@notify_app.command("topics")
def topics() -> None:
    """What an organisation can subscribe to."""
    from .events import TOPICS, topic_url

    for code, words in TOPICS.items():
        typer.echo(f"{code:24} {words}  ({topic_url(code)})")


@notify_app.command("subscribe")
def subscribe_cmd(
        ods: str = typer.Argument(..., help="The subscribing organisation's ODS code."),
        topic: list[str] = TopicOpt,
        channel: str = typer.Option("inbox", help="rest-hook, email or inbox."),
        endpoint: str = typer.Option(None, help="URL (rest-hook) or e-mail address (email)."),
        role: str = typer.Option("clinician", help="The role whose view governs what is sent."),
        scope: str = typer.Option("registered", help="registered: patients registered with the "
                                  "organisation; caseload: any care relationship."),
        header: list[str] = HeaderOpt,
        database: str = DatabaseOpt, data_dir: Path = DataDirOpt) -> None:
    """Subscribe an organisation to events about its patients, without criteria."""
    from ..fhir.outcome import FHIRError
    from .subscriptions import subscribe

    sc = _open(database, data_dir)
    try:
        sid = subscribe(sc, ods=ods, topics=topic, channel=channel, endpoint=endpoint,
                        role=role, scope=scope, headers=header or [])
    except FHIRError as e:
        _fail(str(e))
    typer.echo(sid)


@notify_app.command("list")
def list_cmd(org: str = typer.Option(None, "--org", help="Only this organisation's."),
             database: str = DatabaseOpt, data_dir: Path = DataDirOpt) -> None:
    """Subscriptions with their state and counts (sent, refused, undelivered)."""
    from .subscriptions import list_subscriptions

    for s in list_subscriptions(_open(database, data_dir), org):
        what = (s["topics"] or "").strip() or s["criteria"] or ""
        err = f"  last failure: {s['last_error']}" if s["last_error"] else ""
        typer.echo(f"{s['id']}  {s['ods'] or '-'}  {s['status']:9} {s['channel']:9} {what}  "
                   f"sent {s['sent']} refused {s['refused']} undelivered {s['dead']}{err}")


def _status(sid: str, status: str, database, data_dir) -> None:
    from .subscriptions import set_status

    if not set_status(_open(database, data_dir), sid, status):
        _fail(f"no subscription {sid}")
    typer.echo(f"{sid} {status}")


@notify_app.command("off")
def off(sid: str, database: str = DatabaseOpt, data_dir: Path = DataDirOpt) -> None:
    """Stop a subscription (its queue is kept)."""
    _status(sid, "off", database, data_dir)


@notify_app.command("on")
def on(sid: str, database: str = DatabaseOpt, data_dir: Path = DataDirOpt) -> None:
    """Start a subscription again."""
    _status(sid, "active", database, data_dir)


@notify_app.command("dead-letters")
def dead_letters(org: str = typer.Option(None, "--org"), database: str = DatabaseOpt,
                 data_dir: Path = DataDirOpt) -> None:
    """Notifications that failed every attempt."""
    from sqlalchemy import select

    from .schema import notify_delivery, notify_subscription

    sc = _open(database, data_dir)
    q = (select(notify_delivery.c.id, notify_delivery.c.subscription_id,
                notify_delivery.c.attempts, notify_delivery.c.last_error)
         .join(notify_subscription, notify_subscription.c.id == notify_delivery.c.subscription_id)
         .where(notify_delivery.c.status == "dead").order_by(notify_delivery.c.id))
    if org:
        q = q.where(notify_subscription.c.ods == org)
    with sc.engine.connect() as conn:
        rows = conn.execute(q).all()
    for r in rows:
        typer.echo(f"{r.id}  {r.subscription_id}  attempts {r.attempts}  {r.last_error}")
    if not rows:
        typer.echo("nothing undelivered")


@notify_app.command("retry")
def retry(sid: str, database: str = DatabaseOpt, data_dir: Path = DataDirOpt) -> None:
    """Queue a subscription's dead letters again (in order, same idempotency keys)."""
    from .worker import retry_dead

    typer.echo(f"{retry_dead(_open(database, data_dir), subscription_id=sid)} queued again")


@notify_app.command("status")
def status(sid: str, database: str = DatabaseOpt, data_dir: Path = DataDirOpt) -> None:
    """A subscription's SubscriptionStatus (Subscriptions Backport Parameters, as $status)."""
    import orjson

    from .subscriptions import status_parameters

    out = status_parameters(_open(database, data_dir), sid)
    if out is None:
        _fail(f"no subscription {sid}")
    typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


@notify_app.command("run")
def run(interval: float = typer.Option(0.2, help="Seconds between idle passes."),
        database: str = DatabaseOpt, data_dir: Path = DataDirOpt) -> None:
    """Run the delivery worker in this process until interrupted (set
    SHAREDCARE_NOTIFY_WORKER=0 on the servers if this is the only one)."""
    import signal
    import threading

    from .worker import NotifyWorker

    worker = NotifyWorker(_open(database, data_dir))
    stop = worker.start(interval)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    worker.stop(stop)
