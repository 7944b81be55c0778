"""Request types for views: what the middleware and `login_required` guarantee, said to mypy.

`HtmxHttpRequest` is every request of this site: django-htmx's middleware (settings.MIDDLEWARE)
gives each one `request.htmx`. `AuthenticatedHttpRequest` is a request that passed
`login_required` (or an API operation's authentication): its `user` is a real, signed-in
`User`, not `AnonymousUser`. A view annotates its request with the type its decorators make true;
neither class is ever instantiated, they only narrow attributes Django sets at run time.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


class AuthenticatedHttpRequest(HtmxHttpRequest):
    user: User
