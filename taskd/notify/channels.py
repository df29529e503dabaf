"""The two ways a notification leaves taskd: SMTP (aiosmtplib) and an HTTP POST (aiohttp).

`Channels` owns what deliveries share: the HTTP session and the TLS contexts (built off the
event loop, once per CA file). Secrets are read from their files at each delivery.
"""

from __future__ import annotations

import asyncio
import ssl
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aiosmtplib

from taskd import __version__
from taskd.notify.report import EVENT_FINISHED, sign
from taskd.settings import SmtpSecurity, SmtpSettings, WebhookSettings

_RETRYABLE_HTTP = frozenset({408, 425, 429})


class FinalError(Exception):
    """A delivery failure that another attempt would not fix (a 5xx answer, a bad secret)."""


class _RetryableHttpError(Exception):
    """An HTTP answer worth another attempt (5xx, 429, ...); its name shows in the logs."""


class Channels:
    """Sends mail and webhook POSTs; `close()` when done."""

    def __init__(self, *, hostname: str) -> None:
        self.hostname = hostname
        self._session: aiohttp.ClientSession | None = None
        self._tls_contexts: dict[Path | None, ssl.SSLContext] = {}

    def forget_tls(self) -> None:
        """Drop the cached TLS contexts (a reload is how a changed ca_file is taken up)."""
        self._tls_contexts.clear()

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send_mail(self, smtp: SmtpSettings, message: EmailMessage, recipient: str) -> None:
        """Send one message to one recipient; FinalError when another try would not help."""
        password = None
        if smtp.password_file is not None:
            password = (await read_secret(smtp.password_file, "password_file")).decode()
        tls_context = None
        if smtp.security is not SmtpSecurity.NONE:
            tls_context = await self._tls_context(smtp.ca_file)
        try:
            await aiosmtplib.send(
                message,
                sender=smtp.from_address,
                recipients=[recipient],
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.username,
                password=password,
                use_tls=smtp.security is SmtpSecurity.TLS,
                # False, not None: None would upgrade whenever the server offers it.
                start_tls=smtp.security is SmtpSecurity.STARTTLS,
                tls_context=tls_context,
                timeout=smtp.timeout_sec,
                local_hostname=self.hostname,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            if all(refused.code >= 500 for refused in error.recipients):
                raise FinalError(describe(error)) from error
            raise
        except aiosmtplib.SMTPResponseException as error:
            if error.code >= 500:
                raise FinalError(f"{error.code} {error.message}") from error
            raise
        except aiosmtplib.SMTPNotSupported as error:
            raise FinalError(f"the server does not support it: {error}") from error

    async def _tls_context(self, ca_file: Path | None) -> ssl.SSLContext:
        context = self._tls_contexts.get(ca_file)
        if context is None:
            # Loading CA certificates reads files: off the event loop, once.
            cafile = str(ca_file) if ca_file is not None else None
            context = await asyncio.to_thread(ssl.create_default_context, cafile=cafile)
            self._tls_contexts[ca_file] = context
        return context

    async def post(self, hook: WebhookSettings, body: bytes, delivery_id: str) -> None:
        """POST one webhook body; FinalError for an answer another try would not change."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"taskd/{__version__}",
            "X-Taskd-Event": EVENT_FINISHED,
            # The same on every retry: a receiver may drop duplicates by it.
            "X-Taskd-Delivery": delivery_id,
        }
        if hook.secret_file is not None:
            secret = await read_secret(hook.secret_file, "secret_file")
            headers["X-Taskd-Signature"] = "sha256=" + sign(secret, body)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=hook.timeout_sec)
        async with self._session.post(
            hook.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            if 200 <= response.status < 300:
                return
            detail = f"HTTP {response.status} {response.reason or ''}".rstrip()
            if response.status in _RETRYABLE_HTTP or response.status >= 500:
                raise _RetryableHttpError(detail)
            raise FinalError(detail)


async def read_secret(path: Path, key: str) -> bytes:
    """Read a password or secret file (a trailing newline is not part of it)."""
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as error:
        raise OSError(f"cannot read {key} {path}: {error.strerror or error}") from error
    secret = data.rstrip(b"\r\n")
    if not secret:
        raise FinalError(f"{key} {path} is empty")
    return secret


def describe(error: BaseException) -> str:
    """`Type: message` of an error, for logs."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
