"""SMS through Twilio: the same agent, character and memory as on Discord.

- :mod:`bot.sms.text` — pure helpers: SMS normalisation, 1,600-character segments, keywords, link codes.
- :mod:`bot.sms.store` — the SMS records (:mod:`bot.store.sms`: MessageSid dedupe, state machine, leases,
  rate limit, link codes, on SQLite or PostgreSQL) joined with opt-outs.
- :mod:`bot.sms.outbound` — REST sends (twilio async client) with Twilio errors mapped to outcomes.
- :mod:`bot.sms.inbound` — the signed webhooks and the pipeline that answers through TwiML or REST.
"""

from __future__ import annotations

from bot.sms.inbound import InboundSms, SmsService, StatusUpdate, TwilioWebhooks, parse_inbound, parse_status
from bot.sms.outbound import SendOutcome, SendResult, TwilioSender
from bot.sms.store import PhoneLink, SmsStore
from bot.settings import Settings



async def check_twilio(settings: Settings) -> str:
    """``voicebot check``: authenticate against Twilio by fetching the account."""
    assert settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_phone_number
    sender = TwilioSender(settings.twilio_account_sid, settings.twilio_auth_token.get(), settings.twilio_phone_number,
                          api_base=settings.twilio_api_base)
    try:
        return await sender.check()
    finally:
        await sender.aclose()


__all__ = [
    "check_twilio",
    "InboundSms",
    "PhoneLink",
    "SendOutcome",
    "SendResult",
    "SmsService",
    "SmsStore",
    "StatusUpdate",
    "TwilioSender",
    "TwilioWebhooks",
    "parse_inbound",
    "parse_status",
]
