"""How a notification leaves: rest-hook (HTTP POST), e-mail (SMTP), or the staff inbox.

What goes out is decided by :mod:`sharedcare.notify.worker` under the subscriber's policy; this
module only shapes and sends it:

* **rest-hook**, criteria Subscription: the resource itself (``payload`` application/fhir+json)
  or no body at all (no payload). Topic Subscriptions and organisations' rest-hooks get a
  Subscriptions Backport ``history`` Bundle: a ``SubscriptionStatus`` Parameters
  (``event-notification``, ``notification-event`` with its number, time and focus) and, for
  ``full-resource``, the resource. Every POST carries ``Idempotency-Key`` (one per event and
  subscriber: a redelivery after a crash or a failure has the same key) and the subscription's
  own ``header``s.
* **e-mail**: says that something happened and where to look -- never who, never what. Sent
  with ``$SHAREDCARE_SMTP_URL`` (``smtp://user:password@host:25?from=...&starttls=1``).
* **inbox**: a row in ``notify_inbox`` written in the worker's transaction (so exactly once).
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import smtplib
import socket
import ssl
import threading
import time
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlparse

import orjson

from ..store.repository import Stored, instant, now_utc
from .events import TOPICS, main_code, topic_url

ENV_SMTP = "SHAREDCARE_SMTP_URL"
# Receivers on private, loopback or link-local addresses (an internal service, the cloud
# metadata address) are refused unless named here: host names, addresses or networks,
# comma-separated (e.g. "127.0.0.1,10.20.0.0/16,epr.trust.nhs.uk").
ENV_ALLOWED_HOSTS = "SHAREDCARE_WEBHOOK_ALLOWED_HOSTS"
ENV_BASE = "SHAREDCARE_BASE_URL"
HTTP_TIMEOUT = float(os.environ.get("SHAREDCARE_NOTIFY_TIMEOUT", "10"))
USER_AGENT = "sharedcare-notify/1"
STATUS_PROFILE = ("http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                  "backport-subscription-status-r4")


class DeliveryFailed(Exception):
    """The receiver did not accept it (kind only: never the receiver's answer, which may echo
    what we sent)."""


def base_url() -> str:
    return os.environ.get(ENV_BASE, "http://127.0.0.1:8000").rstrip("/")


def idempotency_key(event_id: int, sid: str) -> str:
    return f"{sid}/{event_id}"


def notification_bundle(sub, ev, number: int, content: str, stored: Stored | None) -> dict:
    """A Subscriptions Backport (R4) event-notification: a history Bundle whose first entry is
    the SubscriptionStatus Parameters."""
    fhir = base_url() + "/fhir"
    sub_ref = f"Subscription/{sub.resource_id}" if sub.resource_id else f"Subscription/{sub.id}"
    code = main_code(ev.kinds, sub.topics)
    topic = sub.criteria if sub.kind == "topic" else topic_url(code or "encounter-start")
    event = [{"name": "event-number", "valueString": str(number)},
             {"name": "timestamp", "valueInstant": instant(ev.created)}]
    if content != "empty":
        event.append({"name": "focus", "valueReference": {"reference": f"{ev.rtype}/{ev.rid}"}})
    status = {
        "resourceType": "Parameters",
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": sub_ref}},
            {"name": "topic", "valueCanonical": topic},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": str(number)},
            {"name": "notification-event", "part": event},
        ],
    }
    entries = [{"fullUrl": f"urn:uuid:{_uuid(sub.id, ev.id)}", "resource": status,
                "request": {"method": "GET", "url": f"{sub_ref}/$status"},
                "response": {"status": "200"}}]
    if content == "id-only":
        entries.append({"fullUrl": f"{fhir}/{ev.rtype}/{ev.rid}",
                        "request": {"method": "PUT", "url": f"{ev.rtype}/{ev.rid}"},
                        "response": {"status": "200"}})
    elif content == "full-resource" and stored is not None:
        entries.append({"fullUrl": f"{fhir}/{ev.rtype}/{ev.rid}",
                        "resource": orjson.loads(stored.content),
                        "request": {"method": "PUT", "url": f"{ev.rtype}/{ev.rid}"},
                        "response": {"status": "200"}})
    return {"resourceType": "Bundle", "id": _uuid("bundle", sub.id, ev.id), "type": "history",
            "timestamp": instant(ev.created), "entry": entries}


def heartbeat_bundle(sub) -> dict:
    """A Subscriptions Backport heartbeat: a history Bundle holding only the SubscriptionStatus
    (type heartbeat, the events so far): the channel is alive, nothing happened."""
    sub_ref = f"Subscription/{sub.resource_id}" if sub.resource_id else f"Subscription/{sub.id}"
    stamp = instant(now_utc())
    status = {
        "resourceType": "Parameters",
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": sub_ref}},
            {"name": "topic", "valueCanonical": sub.criteria},
            {"name": "status", "valueCode": sub.status},
            {"name": "type", "valueCode": "heartbeat"},
            {"name": "events-since-subscription-start", "valueString": str(sub.events)},
        ],
    }
    return {"resourceType": "Bundle", "id": _uuid("heartbeat", sub.id, stamp),
            "type": "history", "timestamp": stamp,
            "entry": [{"fullUrl": f"urn:uuid:{_uuid('heartbeat-status', sub.id, stamp)}",
                       "resource": status,
                       "request": {"method": "GET", "url": f"{sub_ref}/$status"},
                       "response": {"status": "200"}}]}


def send_heartbeat(sub) -> None:
    headers = {"Content-Type": "application/fhir+json"}
    for h in orjson.loads(sub.headers or "[]"):
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    status = post(sub.endpoint, orjson.dumps(heartbeat_bundle(sub)), headers)
    if not 200 <= status < 300:
        raise DeliveryFailed(f"HTTP {status}")


def _uuid(*parts) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, "sharedcare-notify:" + ":".join(map(str, parts))))


# ------------------------------------------------------------------ rest-hook
_local = threading.local()


def _connection(url) -> http.client.HTTPConnection:
    """A kept-alive connection per sending thread and receiver (a light client: the worker's
    cost per notification is mostly the receiver's)."""
    key = (url.scheme, url.hostname, url.port)
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    conn = pool.get(key)
    if conn is None:
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=HTTP_TIMEOUT,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=HTTP_TIMEOUT)
        pool[key] = conn
    return conn


def _drop(url) -> None:
    conn = getattr(_local, "pool", {}).pop((url.scheme, url.hostname, url.port), None)
    if conn is not None:
        conn.close()


def _allowed() -> tuple[set[str], list]:
    names, nets = set(), []
    for item in os.environ.get(ENV_ALLOWED_HOSTS, "").split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            names.add(item)
    return names, nets


def literal_refusal(host: str | None) -> str | None:
    """At subscription time: a receiver given as a local name or a non-public address is
    refused at once (names are resolved, and checked again, when sending)."""
    if not host:
        return "the endpoint has no host"
    names, nets = _allowed()
    if host.lower() in names:
        return None
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
            ".localhost"):
        return _refusal(host)
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return None if ip.is_global or any(ip in n for n in nets) else _refusal(host)


def _refusal(host: str) -> str:
    return (f"{host} is a private or local address: notifications are only sent there when "
            f"{ENV_ALLOWED_HOSTS} names it")


_CHECKED: dict[tuple[str, int], tuple[float, str | None]] = {}


def address_refusal(host: str | None, port: int | None) -> str | None:
    """When sending: every address the host resolves to must be public or allowed, so a
    subscriber cannot make the server POST to an internal service. Answers are kept 60 s."""
    if not host:
        return "the endpoint has no host"
    names, nets = _allowed()
    if host.lower() in names:
        return None
    key = (host.lower(), port or 0)
    hit = _CHECKED.get(key)
    if hit and hit[0] > time.monotonic():
        return hit[1]
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port or 443, proto=socket.IPPROTO_TCP)
        why = None
        for info in infos:
            ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
            if not ip.is_global and not any(ip in n for n in nets):
                why = _refusal(host)
                break
    except (socket.gaierror, UnicodeError):
        why = "the endpoint's host name does not resolve"
    _CHECKED[key] = (time.monotonic() + 60, why)
    return why


def post(endpoint: str, body: bytes, headers: dict) -> int:
    """POST on a kept-alive connection; a connection the receiver closed while idle is
    reopened once. Returns the status; the answer's body is read and dropped, never logged."""
    url = urlparse(endpoint)
    refused = address_refusal(url.hostname, url.port)
    if refused:
        raise DeliveryFailed("endpoint refused: private or unresolvable address")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = {"User-Agent": USER_AGENT, "Content-Length": str(len(body)), **headers}
    for attempt in (1, 2):
        conn = _connection(url)
        try:
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            if r.will_close:
                _drop(url)
            return r.status
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
            _drop(url)
            if attempt == 2:
                raise DeliveryFailed(type(e).__name__) from None
        except (OSError, http.client.HTTPException) as e:
            _drop(url)
            raise DeliveryFailed(type(e).__name__) from None
    raise DeliveryFailed("unreachable")


def rest_hook(sub, ev, number: int, stored: Stored | None) -> None:
    headers = {"Idempotency-Key": idempotency_key(ev.id, sub.id),
               "X-Sharedcare-Event": str(ev.id)}
    for h in orjson.loads(sub.headers or "[]"):
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    body = None
    if sub.kind == "criteria":
        if sub.payload and stored is not None:
            body = stored.content
            headers["Content-Type"] = "application/fhir+json"
    else:
        body = orjson.dumps(notification_bundle(sub, ev, number, sub.payload or "id-only",
                                                stored))
        headers["Content-Type"] = "application/fhir+json"
    status = post(sub.endpoint, body or b"", headers)
    if not 200 <= status < 300:
        raise DeliveryFailed(f"HTTP {status}")


# ------------------------------------------------------------------ e-mail
def smtp_settings() -> dict | None:
    url = os.environ.get(ENV_SMTP)
    if not url:
        return None
    u = urlparse(url)
    q = parse_qs(u.query)
    return {"ssl": u.scheme == "smtps", "host": u.hostname or "localhost",
            "port": u.port or (465 if u.scheme == "smtps" else 25),
            "user": unquote(u.username) if u.username else None,
            "password": unquote(u.password) if u.password else None,
            "from": (q.get("from") or ["sharedcare@localhost"])[0],
            "starttls": (q.get("starttls") or ["0"])[0] in ("1", "true", "yes")}


def email_text(sub, ev) -> tuple[str, str]:
    """Subject and body: that something happened and where to look. No names, no NHS number,
    no diagnosis: e-mail is not a secure channel."""
    code = main_code(ev.kinds, sub.topics)
    what = TOPICS.get(code, "a record you follow was updated") if code else \
        "a record you follow was updated"
    subject = "sharedcare: a new notification"
    body = (f"Something happened that you asked to be told about: {what}.\n\n"
            f"Sign in to see it: {base_url()}/notifications\n\n"
            "This message holds no patient details on purpose. If you did not expect it, tell "
            "your organisation's information governance lead.\n")
    return subject, body


def email(sub, ev, number: int, stored: Stored | None) -> None:
    settings = smtp_settings()
    if settings is None:
        raise DeliveryFailed("no SMTP server configured (SHAREDCARE_SMTP_URL)")
    subject, body = email_text(sub, ev)
    msg = EmailMessage()
    msg["From"] = settings["from"]
    msg["To"] = sub.endpoint.removeprefix("mailto:")
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{_uuid(sub.id, ev.id)}@sharedcare>"
    msg["Idempotency-Key"] = idempotency_key(ev.id, sub.id)
    msg.set_content(body)
    try:
        cls = smtplib.SMTP_SSL if settings["ssl"] else smtplib.SMTP
        with cls(settings["host"], settings["port"], timeout=HTTP_TIMEOUT) as s:
            if settings["starttls"]:
                s.starttls(context=ssl.create_default_context())
            if settings["user"]:
                s.login(settings["user"], settings["password"] or "")
            s.send_message(msg)
    except (OSError, smtplib.SMTPException) as e:
        raise DeliveryFailed(type(e).__name__) from None


SENDERS = {"rest-hook": rest_hook, "email": email}
