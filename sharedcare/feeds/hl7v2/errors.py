"""The one exception the HL7 v2 feed raises, carrying what an ACK/NACK needs."""

from __future__ import annotations

# HL7 table 0357 (message error condition codes) used by this feed.
ERROR_TEXT = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "207": "Application internal error",
}


class HL7Error(Exception):
    """A message the feed cannot accept.

    ack_code: 'AE' (understood, content bad) or 'AR' (rejected: envelope/type/event).
    error_code: HL7 table 0357 code. location: 'SEG' or 'SEG-n' (e.g. 'PID-3'), or None.
    text: a human reason. It never contains patient data: only segment/field names.
    """

    def __init__(self, ack_code: str, error_code: str, location: str | None, text: str):
        if ack_code not in ("AE", "AR"):
            raise ValueError(f"ack_code must be AE or AR, not {ack_code!r}")
        if error_code not in ERROR_TEXT:
            raise ValueError(f"unknown HL7 table 0357 code {error_code!r}")
        super().__init__(f"{ack_code} {error_code} {location or '-'}: {text}")
        self.ack_code = ack_code
        self.error_code = error_code
        self.location = location
        self.text = text

    def __repr__(self) -> str:
        return f"HL7Error({self.ack_code!r}, {self.error_code!r}, {self.location!r}, {self.text!r})"
