"""Server-rendered pages (Jinja2 + the NHS.UK design system, served from this server).

Each package with pages exposes `routes(sc)`; this module holds what they share: the template
environment (`render`), who is signed in (`signed_in`), sign-in and role choice, and the
feedback form every page carries.
"""

from __future__ import annotations

from .core import page, render, routes, signed_in

__all__ = ["routes", "render", "signed_in", "page"]
