"""SMS through Twilio: the same agent, character and memory as on Discord.

- :mod:`bot.sms.text` — pure helpers: SMS normalisation, 1,600-character segments, keywords, link codes.
- :mod:`bot.sms.store` — SQLite bookkeeping: MessageSid dedupe, rate limit, opt-outs, link codes.
- :mod:`bot.sms.outbound` — REST sends (twilio async client) with Twilio errors mapped to outcomes.
- :mod:`bot.sms.inbound` — the signed webhooks and the pipeline that answers through TwiML or REST.
"""

from __future__ import annotations

from bot.sms.inbound import InboundSms, SmsService, StatusUpdate, TwilioWebhooks, parse_inbound, parse_status
from bot.sms.outbound import SendOutcome, SendResult, TwilioSender
from bot.sms.store import PhoneLink, SmsStore

__all__ = [
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
