"""A small table of English given-name variants (nicknames and diminutives).

``canonical("Bill") == "WILLIAM"``. Used as one comparison level for given names, so that a GP
record for "Bill" and a council record for "William" still agree on the given name. Names are
compared in their normalised form (upper case, A-Z only). Ambiguous diminutives ("Alex", "Chris",
"Sam", "Jo") map to the most common full form; that only affects one comparison level.
"""

from __future__ import annotations

_GROUPS: dict[str, tuple[str, ...]] = {
    "ALBERT": ("BERT", "BERTIE", "AL"),
    "ALEXANDER": ("ALEX", "ALEC", "SANDY", "XANDER"),
    "ALEXANDRA": ("LEXI", "ALEXA", "SANDRA"),
    "ANDREW": ("ANDY", "DREW"),
    "ANTHONY": ("TONY", "ANT"),
    "BENJAMIN": ("BEN", "BENNY", "BENJI"),
    "CATHERINE": ("CATH", "CATHY", "KATE", "KATIE", "KATHERINE", "KATHRYN", "KATHY", "KAT"),
    "CHARLES": ("CHARLIE", "CHAS", "CHUCK"),
    "CHRISTOPHER": ("CHRIS", "KIT"),
    "CHRISTINE": ("CHRISSY", "TINA", "CHRISTINA"),
    "DANIEL": ("DAN", "DANNY"),
    "DAVID": ("DAVE", "DAVY"),
    "DEBORAH": ("DEBBIE", "DEB", "DEBRA"),
    "DONALD": ("DON", "DONNIE"),
    "DOROTHY": ("DOT", "DOTTIE", "DOLLY"),
    "EDWARD": ("ED", "EDDIE", "TED", "TEDDY", "NED"),
    "ELIZABETH": ("LIZ", "LIZZIE", "BETH", "BETTY", "ELIZA", "LIBBY", "BESS", "ELSIE"),
    "ELEANOR": ("ELLIE", "NELL", "NELLIE"),
    "EMILY": ("EMMY", "MILLIE"),
    "FREDERICK": ("FRED", "FREDDIE", "FREDDY", "FREDRICK"),
    "FRANCES": ("FRAN", "FRANNIE"),
    "FRANCIS": ("FRANK", "FRANKIE"),
    "GERALD": ("GERRY", "JERRY"),
    "GREGORY": ("GREG",),
    "HAROLD": ("HAL",),
    "HENRY": ("HARRY", "HANK"),
    "ISABELLA": ("BELLA", "IZZY", "ISABEL", "ISOBEL"),
    "JACQUELINE": ("JACKIE", "JACQUI"),
    "JAMES": ("JIM", "JIMMY", "JAMIE"),
    "JENNIFER": ("JEN", "JENNY", "JENNI"),
    "JOHN": ("JACK", "JOHNNY", "JON"),
    "JONATHAN": ("JONNY", "JONATHON"),
    "JOSEPH": ("JOE", "JOEY"),
    "JOSEPHINE": ("JO", "JOSIE"),
    "KENNETH": ("KEN", "KENNY"),
    "LAWRENCE": ("LARRY", "LAURIE", "LAURENCE"),
    "LEONARD": ("LEN", "LENNY", "LEO"),
    "MARGARET": ("MAGGIE", "MEG", "PEGGY", "MAGGY", "MADGE", "MARGIE"),
    "MATTHEW": ("MATT", "MATTY"),
    "MICHAEL": ("MIKE", "MICK", "MICKY", "MIKEY"),
    "NICHOLAS": ("NICK", "NICKY", "NICO"),
    "PATRICIA": ("PAT", "PATTY", "TRISH", "TRICIA"),
    "PATRICK": ("PADDY",),
    "PETER": ("PETE",),
    "PHILIP": ("PHIL", "PHILLIP", "PIP"),
    "RAYMOND": ("RAY",),
    "REBECCA": ("BECKY", "BECCA", "BEX"),
    "RICHARD": ("RICH", "RICHIE", "RICK", "RICKY", "DICK"),
    "ROBERT": ("BOB", "BOBBY", "ROB", "ROBBIE", "BERT"),
    "RONALD": ("RON", "RONNIE"),
    "SAMUEL": ("SAM", "SAMMY"),
    "SAMANTHA": ("SAMMIE",),
    "STEPHEN": ("STEVE", "STEVEN", "STEVIE"),
    "SUSAN": ("SUE", "SUSIE", "SUZY", "SUZANNE"),
    "TERENCE": ("TERRY", "TEL"),
    "THOMAS": ("TOM", "TOMMY"),
    "TIMOTHY": ("TIM", "TIMMY"),
    "VICTORIA": ("VICKY", "VICKI", "TORI"),
    "WILLIAM": ("BILL", "BILLY", "WILL", "WILLIE", "WILLY", "LIAM"),
    "ZACHARY": ("ZACH", "ZAC", "ZACK"),
}

NICKNAMES: dict[str, str] = {}
for _full, _variants in _GROUPS.items():
    for _v in _variants:
        NICKNAMES.setdefault(_v, _full)

VARIANTS: dict[str, tuple[str, ...]] = dict(_GROUPS)


def canonical(given: str | None) -> str | None:
    """The canonical full form of a normalised given name (itself if it has no known form)."""
    if not given:
        return given
    return NICKNAMES.get(given, given)
