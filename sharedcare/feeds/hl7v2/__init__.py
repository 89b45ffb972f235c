"""HL7 v2 feed: parse messages from hospital systems, map them to FHIR R4, acknowledge over MLLP.

mapped = to_fhir(raw, source_org="RXX", feed_id="pas-adt")   # MappedMessage; .bundle
ack = build_ack(raw)                                         # 'AA' ACK text
server = await serve_mllp("0.0.0.0", 2575, handle)           # handle(raw) -> ACK text
"""

from .ack import build_ack
from .errors import HL7Error
from .mapping import MappedMessage, to_fhir
from .mllp import mllp_send, serve_mllp
from .parser import parse

__all__ = [
    "HL7Error",
    "MappedMessage",
    "build_ack",
    "mllp_send",
    "parse",
    "serve_mllp",
    "to_fhir",
]
