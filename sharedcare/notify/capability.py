"""What the CapabilityStatement says about Subscription (R4, and the R5 Backport topics)."""

from __future__ import annotations

from .events import GOVERNANCE_EVENTS, TOPICS, topic_url

TOPIC_EXT = ("http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
             "capabilitystatement-subscriptiontopic-canonical")


def subscription_resource() -> dict:
    return {
        "type": "Subscription",
        "documentation": (
            "R4 criteria subscriptions (criteria: a search such as Encounter?class=IMP; channel "
            "rest-hook with payload application/fhir+json or none; email; header) and Subscriptions "
            "R5 Backport topic subscriptions (criteria: a topic canonical below). requested "
            "becomes active once accepted; error after a notification is dead-lettered; off "
            "after end. Notifications go out only when the subscriber's organisation and role "
            "may read the resource at send time; each is audited; every POST carries an "
            "Idempotency-Key."),
        "extension": [{"url": TOPIC_EXT, "valueCanonical": topic_url(c)}
                      for c in TOPICS if c not in GOVERNANCE_EVENTS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "interaction": [{"code": c} for c in ("read", "vread", "update", "delete",
                                               "history-instance", "create")],
    }
