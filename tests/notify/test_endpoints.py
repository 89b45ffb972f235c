"""A subscriber cannot make the server POST to an internal service: rest-hook receivers on
private, loopback or link-local addresses are refused when subscribing and again when sending
(a public name that resolves to one), unless SHAREDCARE_WEBHOOK_ALLOWED_HOSTS names them."""

from __future__ import annotations

import pytest

from sharedcare.fhir.outcome import FHIRError
from sharedcare.notify import channels
from sharedcare.notify.subscriptions import _check_endpoint


@pytest.fixture
def nothing_allowed(monkeypatch):
    monkeypatch.delenv(channels.ENV_ALLOWED_HOSTS, raising=False)
    channels._CHECKED.clear()
    yield
    channels._CHECKED.clear()


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://10.1.2.3/hook", "https://192.168.0.10/hook", "http://127.0.0.1:5432/",
    "http://[::1]/hook", "http://localhost:8000/admin", "http://0.0.0.0/"])
def test_a_local_receiver_is_refused_when_subscribing(nothing_allowed, url):
    with pytest.raises(FHIRError) as e:
        _check_endpoint("rest-hook", url, "Subscription.channel.endpoint")
    assert e.value.status == 400
    assert "private or local" in e.value.issues[0].diagnostics
    assert e.value.issues[0].expression == "Subscription.channel.endpoint"


def test_a_public_receiver_is_accepted(nothing_allowed):
    url = "https://gp-system.example.org/hooks/sharedcare"
    assert _check_endpoint("rest-hook", url, "endpoint") == url
    assert channels.literal_refusal("8.8.8.8") is None


def test_a_name_that_resolves_to_this_machine_is_refused_when_sending(nothing_allowed):
    # Accepted at subscription time (a name), refused before any connection is made.
    assert channels.literal_refusal("ip6-localhost.example") is None
    assert "private or local" in (channels.address_refusal("localhost", 80) or "")
    with pytest.raises(channels.DeliveryFailed, match="endpoint refused"):
        channels.post("http://localhost:9/hook", b"{}", {})


def test_the_allow_list_names_hosts_and_networks(monkeypatch):
    monkeypatch.setenv(channels.ENV_ALLOWED_HOSTS, "10.20.0.0/16, epr.trust.example")
    channels._CHECKED.clear()
    assert channels.literal_refusal("10.20.4.5") is None
    assert channels.literal_refusal("10.21.4.5") is not None
    assert channels.address_refusal("epr.trust.example", 443) is None
    assert channels.address_refusal("10.20.4.5", 443) is None
    channels._CHECKED.clear()
