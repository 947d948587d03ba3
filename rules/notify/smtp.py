"""Email through an SMTP server (aiosmtplib): plain text, with an HTML part when the event has
one. One connection per message: notices are few, and a fresh connection has no stale state.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

import aiosmtplib

from core.clock import Clock, SystemClock
from core.notify_config import SmtpSettings
from rules.notify.errors import DeliveryError, MissingSecret
from rules.notify.events import Event
from rules.notify.routing import Delivery

__all__ = ["EmailChannel"]

SENDER_NAME = "equipwatch"


class EmailChannel:
    def __init__(
        self, settings: SmtpSettings, *, password: str | None = None, clock: Clock | None = None
    ) -> None:
        self._settings = settings
        self._password = password
        self._clock = clock or SystemClock()
        self._tls_context = (
            ssl.create_default_context(cafile=str(settings.ca_file))
            if settings.ca_file is not None
            else None
        )

    @classmethod
    def from_settings(
        cls,
        settings: SmtpSettings,
        *,
        environ: Mapping[str, str] = os.environ,
        clock: Clock | None = None,
    ) -> EmailChannel:
        password = None
        if settings.password_env is not None:
            password = environ.get(settings.password_env)
            if password is None:
                raise MissingSecret(settings.password_env, "notifications.smtp")
        return cls(settings, password=password, clock=clock)

    async def aclose(self) -> None:
        """Nothing is held between messages."""

    def compose(self, event: Event, delivery: Delivery) -> EmailMessage:
        settings = self._settings
        message = EmailMessage()
        message["From"] = formataddr((SENDER_NAME, settings.from_address))
        message["To"] = delivery.address
        message["Subject"] = event.subject
        message["Date"] = format_datetime(self._clock.now())
        # the same notice always gets the same Message-ID, so a mail client shows a copy
        # resent after a crash as one message
        identity = hashlib.sha256(f"{event.key}\n{delivery.recipient}".encode()).hexdigest()[:32]
        domain = settings.from_address.rpartition("@")[2]
        message["Message-ID"] = f"<{identity}.equipwatch@{domain}>"
        # RFC 3834: keeps out-of-office replies away from the sender address
        message["Auto-Submitted"] = "auto-generated"
        message["X-Equipwatch-Event"] = event.key
        message["X-Equipwatch-Severity"] = event.severity
        message.set_content(event.body)
        if event.html is not None:
            message.add_alternative(event.html, subtype="html")
        return message

    async def send(self, event: Event, delivery: Delivery) -> None:
        settings = self._settings
        message = self.compose(event, delivery)
        where = f"SMTP {settings.host}:{settings.port}"
        try:
            await aiosmtplib.send(
                message,
                hostname=settings.host,
                port=settings.port,
                username=settings.username,
                password=self._password,
                use_tls=settings.security == "tls",
                start_tls=settings.security == "starttls",
                tls_context=self._tls_context,
                timeout=settings.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise DeliveryError(
                f"{where} refused {delivery.address}: "
                + "; ".join(f"{r.code} {r.message}" for r in exc.recipients),
                retryable=all(400 <= code < 500 for code in codes),
            ) from exc
        except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected) as exc:
            raise DeliveryError(f"{where}: {exc}", retryable=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 4xx is the server's "try again later"; 5xx (bad credentials, refused sender or
            # content) will fail the same way until someone changes something
            raise DeliveryError(
                f"{where} answered {exc.code} {exc.message}", retryable=400 <= exc.code < 500
            ) from exc
        except aiosmtplib.SMTPNotSupported as exc:
            raise DeliveryError(f"{where}: {exc}", retryable=False) from exc
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(
                f"{where}: certificate not trusted: {exc}", retryable=False
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{where}: {exc}", retryable=True) from exc
