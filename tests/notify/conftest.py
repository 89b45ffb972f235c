from __future__ import annotations

import pytest

from ._support import Receiver


@pytest.fixture(autouse=True)
def _tests_drive_the_worker(monkeypatch):
    """An app made by a fixture (``client``) runs no worker of its own here: each test drives
    its worker, so what ran when is what the test says."""
    monkeypatch.setenv("SHAREDCARE_NOTIFY_WORKER", "0")
    # The tests' receivers listen on this machine, which a real deployment refuses.
    monkeypatch.setenv("SHAREDCARE_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1,localhost")


@pytest.fixture
def receiver():
    r = Receiver()
    server = r.serve()
    yield r
    if r.hold is not None:
        r.hold.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def smtp(monkeypatch):
    """A real SMTP server (aiosmtpd) on a free port; SHAREDCARE_SMTP_URL points at it."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    from tests.conftest import free_port

    class Inbox(Message):
        def __init__(self):
            super().__init__()
            self.messages = []

        def handle_message(self, message):
            self.messages.append(message)

    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("SHAREDCARE_SMTP_URL", f"smtp://127.0.0.1:{port}?from=notify@sharedcare.test")
    monkeypatch.setenv("SHAREDCARE_BASE_URL", "https://care.example.org")
    yield handler.messages
    controller.stop()
