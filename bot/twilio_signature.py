"""``X-Twilio-Signature``: the one check every Twilio route uses (SMS and call webhooks, the media socket).

Twilio signs each request with HMAC (SHA-1 by default; SHA-256 when a Webhooks Rule names it in
``X-Twilio-Webhooks-Signature-Settings``) over the URL it requested followed by the POST
parameters sorted by name. The URL is the *public* one (``PUBLIC_URL`` + path and query): behind a
proxy the Host header is the proxy's idea of the host, so it is never used. The Media Streams
upgrade is a GET and is signed over the ``wss://`` URL of the ``<Stream>`` with no parameters.

Twilio's webhooks are always ``application/x-www-form-urlencoded``. Anything else (a multipart
body would hand the SDK's validator file objects, which it cannot hash) is refused with 415 before
the signature is computed; a body that is not UTF-8 gets 400. Every refusal is logged once, with
the path and the reason, never with the signature or the form.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web
from twilio.request_validator import RequestValidator, get_signature_algorithm

__all__ = ["FORM_TYPE", "TwilioSignature"]

log = logging.getLogger(__name__)

FORM_TYPE = "application/x-www-form-urlencoded"


class TwilioSignature:
    """Checks requests against one Auth Token and the URL base Twilio is given (``public_url``)."""

    def __init__(self, auth_token: str, public_url: str) -> None:
        self._validator = RequestValidator(auth_token)
        self.public_url = public_url.rstrip("/")

    def __repr__(self) -> str:
        return f"TwilioSignature(public_url={self.public_url!r})"

    def valid(self, request: web.Request, url: str, params: Mapping[str, str]) -> bool:
        """Whether ``request`` carries Twilio's signature of ``url`` and ``params``."""
        signature = request.headers.get("X-Twilio-Signature", "")
        if not signature:
            return False
        algorithm = get_signature_algorithm(request.headers.get("X-Twilio-Webhooks-Signature-Settings"))
        return bool(self._validator.validate(url, params, signature, algorithm))

    async def signed_form(self, request: web.Request) -> Mapping[str, str] | web.Response:
        """The webhook's form if Twilio signed it, else the error response to send (already logged)."""
        if request.content_type != FORM_TYPE:
            log.warning("Twilio webhook %s rejected with 415: body is %s, not a form", request.path,
                        (request.content_type or "missing")[:60])
            return web.Response(status=415, text="expected application/x-www-form-urlencoded")
        try:
            form = await request.post()
        except UnicodeDecodeError:
            log.warning("Twilio webhook %s rejected with 400: body is not UTF-8", request.path)
            return web.Response(status=400, text="body is not UTF-8")
        url = self.public_url + request.raw_path
        if not self.valid(request, url, form):  # type: ignore[arg-type]
            log.warning("Twilio webhook %s rejected with 403: %s", request.path,
                        "no X-Twilio-Signature" if not request.headers.get("X-Twilio-Signature")
                        else f"signature does not match {url}")
            return web.Response(status=403, text="invalid signature")
        return form  # type: ignore[return-value]

    def check_upgrade(self, request: web.Request, stream_base: str) -> web.Response | None:
        """None if Twilio signed this WebSocket upgrade, else the 403 to answer (already logged).

        ``stream_base`` is the ``wss://`` (or ``ws://``) form of ``public_url``: the URL Twilio
        connected to is that plus the request's path, signed with no parameters.
        """
        url = stream_base.rstrip("/") + request.raw_path
        if self.valid(request, url, {}):
            return None
        # The path holds the stream token: the log names the route, not the URL.
        log.warning("media stream refused with 403: %s", "no X-Twilio-Signature"
                    if not request.headers.get("X-Twilio-Signature") else "signature does not match the stream URL")
        return web.Response(status=403, text="invalid signature")
