"""Response headers Django 5.2 does not set by itself, and the client address behind proxies.

`SecurityHeadersMiddleware` adds a Content-Security-Policy (settings.CONTENT_SECURITY_POLICY; the
API docs page gets CONTENT_SECURITY_POLICY_DOCS) and a Permissions-Policy to every response, and
refuses a request body larger than the upload cap before Django reads it (413). Referrer-Policy
and Cross-Origin-Opener-Policy come from Django's SecurityMiddleware (SECURE_REFERRER_POLICY,
SECURE_CROSS_ORIGIN_OPENER_POLICY).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from django.conf import settings
from django.http import HttpRequest, HttpResponse

# Pages of the site: scripts and styles only from our own static files (no inline <style>, no
# style="" attributes: progress bars are <progress> elements); no plugins, no framing.
DEFAULT_POLICY: Mapping[str, str] = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}
# Swagger UI (served from django-ninja's bundled static files) styles elements inline.
DOCS_POLICY: Mapping[str, str] = {**DEFAULT_POLICY, "style-src": "'self' 'unsafe-inline'"}
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()"


def policy_header(policy: Mapping[str, str] | str) -> str:
    if isinstance(policy, str):
        return policy
    return "; ".join(f"{name} {value}".strip() for name, value in policy.items())


def client_ip(request: HttpRequest) -> str | None:
    """The client's address. Behind NUM_PROXIES trusted reverse proxies, the address the outermost
    of them saw (counted from the right of X-Forwarded-For, so a client cannot forge it)."""
    proxies = getattr(settings, "NUM_PROXIES", 0)
    if proxies > 0:
        forwarded = [p.strip() for p in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if p.strip()]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR") or None


class SecurityHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self._too_large(request) or self.get_response(request)
        if "Content-Security-Policy" not in response:
            docs = request.path.startswith(getattr(settings, "API_DOCS_PATH", "/api/v1/docs"))
            if docs:
                policy = getattr(settings, "CONTENT_SECURITY_POLICY_DOCS", DOCS_POLICY)
            else:
                policy = getattr(settings, "CONTENT_SECURITY_POLICY", DEFAULT_POLICY)
            if policy:
                response["Content-Security-Policy"] = policy_header(policy)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response

    def _too_large(self, request: HttpRequest) -> HttpResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return HttpResponse("Malformed Content-Length.", status=400, content_type="text/plain")
        if length > settings.IMPORT_MAX_UPLOAD_BYTES + 1024 * 1024:  # the file plus the form around it
            return HttpResponse(
                f"The request is {length:,} bytes; uploads are limited to "
                f"{settings.IMPORT_MAX_UPLOAD_BYTES:,} bytes (IMPORT_MAX_UPLOAD_BYTES).",
                status=413,
                content_type="text/plain",
            )
        return None
