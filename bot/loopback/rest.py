"""The loopback Discord's REST API (``/api/v10``): the subset discord.py calls for this bot.

Unknown routes answer 404 with Discord's error JSON *and* a problem naming the route, so a missing
route is obvious rather than a silent hang. Discord's rate limits are enforced (``ratelimit.py``):
every answer carries the bucket's ``X-RateLimit-*`` headers (discord.py reads them on every
response and waits before it would go over), and a request past a limit gets Discord's 429 and is
recorded as a problem.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bot.loopback.ratelimit import Decision, RateLimiter
from bot.loopback.state import (
    AppCommand,
    Channel,
    ChannelType,
    Interaction,
    Message,
    World,
    channel_payload,
    command_payload,
    message_payload,
    user_payload,
)

__all__ = ["RestAPI", "MESSAGE_LIMIT", "INTERACTION_RESPONSE_TYPES"]

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000  # characters of content in one message
ATTACHMENT_LIMIT = 10 * 1024 * 1024  # bytes of files in one message (a guild without boosts)
EPHEMERAL = 1 << 6
LOADING = 1 << 7
# Interaction callback types: 4 message, 5 deferred message, 6 deferred update, 7 update message,
# 8 autocomplete result, 9 modal, 12 launch activity.
INTERACTION_RESPONSE_TYPES = {1, 4, 5, 6, 7, 8, 9, 12}
COMPONENT_ONLY_TYPES = {6, 7}
AUTOCOMPLETE_CHOICES = 25  # choices in one autocomplete result
CHOICE_TEXT_LIMIT = 100  # characters of a choice's name, and of a string choice's value

Handler = Callable[["Call"], Awaitable[web.StreamResponse]]


@dataclass
class Call:
    """One REST request, parsed: path parameters, JSON body (multipart payload_json too)."""

    request: web.Request
    method: str
    route: str  # the route template, e.g. "POST /channels/{channel_id}/messages"
    params: dict[str, str]
    body: Any
    files: list[str]
    headers: dict[str, str]  # the rate-limit headers every answer to this call carries
    file_data: list[bytes] = field(default_factory=list)  # the uploaded bytes, in ``files`` order


class DiscordHTTPError(Exception):
    """Raised by handlers to answer with Discord's error JSON."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _json_response(payload: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json": discord.py's json_or_text compares the header verbatim and
    # would otherwise hand the caller a str.
    return web.Response(body=json.dumps(payload).encode(), status=status, headers=headers,
                        content_type="application/json")


def _form_error(field: str, code: str, message: str) -> DiscordHTTPError:
    errors: dict[str, Any] = {}
    node = errors
    parts = field.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = {"_errors": [{"code": code, "message": message}]}
    return DiscordHTTPError(400, 50035, "Invalid Form Body", errors)


def _unknown(kind: str, code: int) -> DiscordHTTPError:
    return DiscordHTTPError(404, code, f"Unknown {kind}")


def _snowflake(value: str, kind: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _form_error(f"{kind}_id", "NUMBER_TYPE_COERCE", f"Value \"{value}\" is not snowflake.") from None


class RestAPI:
    """Route table and handlers. ``register(app)`` mounts it under ``/api/v{9,10}``."""

    def __init__(
        self,
        world: World,
        *,
        gateway_url: Callable[[], str],
        dispatch: Callable[[str, dict[str, Any]], None],
        recommended_shards: Callable[[], int],
        session_start_limit: Callable[[], dict[str, int]],
        interaction_deadline: float = 3.0,
        rate_limits: RateLimiter | None = None,
    ) -> None:
        self.world = world
        self._recommended_shards = recommended_shards
        self._session_start_limit = session_start_limit
        self.rate_limits = rate_limits if rate_limits is not None else RateLimiter()
        self._gateway_url = gateway_url
        self._dispatch = dispatch
        self.interaction_deadline = interaction_deadline
        self._routes: list[tuple[str, re.Pattern[str], str, Handler, bool]] = []
        self._deadline_handles: dict[int, asyncio.TimerHandle] = {}
        r = self._add
        r("GET", "/gateway", self.get_gateway, auth=False)
        r("GET", "/gateway/bot", self.get_gateway_bot)
        r("GET", "/users/@me", self.get_me)
        r("GET", "/users/{user_id}", self.get_user)
        r("POST", "/users/@me/channels", self.create_dm)
        r("GET", "/oauth2/applications/@me", self.get_application)
        r("GET", "/applications/@me", self.get_application)
        r("GET", "/applications/{application_id}/commands", self.get_commands)
        r("PUT", "/applications/{application_id}/commands", self.put_commands)
        r("GET", "/applications/{application_id}/guilds/{guild_id}/commands", self.get_commands)
        r("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self.put_commands)
        r("POST", "/interactions/{interaction_id}/{token}/callback", self.interaction_callback, auth=False)
        r("POST", "/webhooks/{application_id}/{token}", self.followup_create, auth=False)
        r("GET", "/webhooks/{application_id}/{token}/messages/{message_id}", self.followup_get, auth=False)
        r("PATCH", "/webhooks/{application_id}/{token}/messages/{message_id}", self.followup_edit, auth=False)
        r("DELETE", "/webhooks/{application_id}/{token}/messages/{message_id}", self.followup_delete, auth=False)
        r("GET", "/channels/{channel_id}", self.get_channel)
        r("GET", "/channels/{channel_id}/messages", self.get_messages)
        r("POST", "/channels/{channel_id}/messages", self.create_message)
        r("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message)
        r("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message)
        r("POST", "/channels/{channel_id}/typing", self.typing)
        r("PUT", "/channels/{channel_id}/voice-status", self.voice_status)
        r("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member)

    # --- plumbing -------------------------------------------------------------------------------

    def _add(self, method: str, template: str, handler: Handler, *, auth: bool = True) -> None:
        pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template.replace("@", "@")) + "$")
        self._routes.append((method, pattern, f"{method} {template}", handler, auth))

    def register(self, app: web.Application) -> None:
        app.router.add_route("*", r"/api/v{version:\d+}/{tail:.*}", self._handle)

    def _limit(self, route: str, path: str, params: dict[str, str]) -> Decision:
        decision = self.rate_limits.check(route, path, params)
        if not decision.allowed:
            scope = "the global limit" if decision.is_global else f"the {decision.bucket} bucket"
            self.world.problem(
                f"the bot exceeded Discord's rate limit ({scope}) with {route}; Discord answered 429, "
                f"retry after {decision.retry_after:.3f} s", route=route, bucket=decision.bucket,
                retry_after=decision.retry_after, is_global=decision.is_global,
            )
            self.world.events.append("rate_limited", route=route, path=path, bucket=decision.bucket,
                                     retry_after=decision.retry_after, is_global=decision.is_global)
        return decision

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        version = request.match_info["version"]
        path = "/" + request.match_info["tail"]
        method = request.method
        for route_method, pattern, route, handler, auth in self._routes:
            if route_method != method:
                continue
            match = pattern.match(path)
            if match is None:
                continue
            break
        else:
            route = f"{method} {path}"
            self.world.problem(f"the bot called {method} /api/v{version}{path}, which the loopback Discord does not implement",
                               route=route)
            return _json_response({"message": "404: Not Found", "code": 0}, status=404,
                                  headers=self._limit(route, path, {}).headers)
        if version not in ("9", "10"):
            self.world.problem(f"the bot used API version v{version}; Discord serves v9/v10", route=route)
        if auth and request.headers.get("Authorization") != f"Bot {self.world.token}":
            self.world.problem(f"{route} without a valid 'Authorization: Bot <token>' header", route=route)
            response = _json_response({"message": "401: Unauthorized", "code": 0}, status=401,
                                      headers={"Via": "1.1 google"})
            response.force_close()
            return response
        decision = self._limit(route, path, match.groupdict())
        if not decision.allowed:
            await request.read()
            return _json_response(decision.body(), status=429, headers=decision.headers)
        try:
            body, files, data = await self._read_body(request)
            call = Call(request, method, route, match.groupdict(), body, files, decision.headers, data)
            self.world.events.append("rest", route=route, path=path, params=call.params, body=body)
            return await handler(call)
        except DiscordHTTPError as exc:
            return _json_response(exc.payload(), status=exc.status, headers=decision.headers)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[str], list[bytes]]:
        if not request.can_read_body:
            return None, [], []
        ctype = request.content_type
        if ctype == "application/json":
            try:
                return await request.json(), [], []
            except json.JSONDecodeError:
                raise DiscordHTTPError(400, 50109, "The request body contains invalid JSON.") from None
        if ctype.startswith("multipart/"):
            body: Any = None
            files: list[str] = []
            data: list[bytes] = []
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    files.append(part.filename or part.name or "file")  # type: ignore[union-attr]
                    data.append(bytes(await part.read()))  # type: ignore[union-attr]
            if sum(len(d) for d in data) > ATTACHMENT_LIMIT:
                # Discord answers an upload over the guild's limit with 413 and code 40005.
                raise DiscordHTTPError(413, 40005, "Request entity too large")
            return body, files, data
        await request.read()
        return None, [], []

    def _json(self, call: Call, payload: Any, status: int = 200) -> web.Response:
        return _json_response(payload, status=status, headers=call.headers)

    def _empty(self, call: Call) -> web.Response:
        return web.Response(status=204, headers=call.headers)

    def _channel(self, call: Call) -> Channel:
        channel_id = _snowflake(call.params["channel_id"], "channel")
        channel = self.world.channels.get(channel_id)
        if channel is None:
            self.world.problem(f"{call.route}: channel {channel_id} does not exist", route=call.route)
            raise _unknown("Channel", 10003)
        return channel

    # --- gateway, identity ----------------------------------------------------------------------

    async def get_gateway(self, call: Call) -> web.Response:
        return self._json(call, {"url": self._gateway_url()})

    async def get_gateway_bot(self, call: Call) -> web.Response:
        return self._json(call, {
            "url": self._gateway_url(),
            "shards": self._recommended_shards(),
            "session_start_limit": self._session_start_limit(),
        })

    async def get_me(self, call: Call) -> web.Response:
        return self._json(call, {**user_payload(self.world.bot), "verified": True, "mfa_enabled": False,
                                 "email": None, "locale": "en-US"})

    async def get_user(self, call: Call) -> web.Response:
        user = self.world.users.get(_snowflake(call.params["user_id"], "user"))
        if user is None:
            raise _unknown("User", 10013)
        return self._json(call, user_payload(user))

    async def create_dm(self, call: Call) -> web.Response:
        body = call.body or {}
        recipient_id = int(body.get("recipient_id", 0))
        user = self.world.users.get(recipient_id)
        if user is None:
            raise _form_error("recipient_id", "USER_NOT_FOUND", "Unknown user")
        channel = self.world.dm_channel(recipient_id)
        payload = {"id": str(channel.id), "type": ChannelType.DM, "last_message_id": None,
                   "recipients": [user_payload(user)], "flags": 0}
        return self._json(call, payload)

    async def get_application(self, call: Call) -> web.Response:
        world = self.world
        return self._json(call, {
            "id": str(world.application_id),
            "name": world.bot.username,
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": user_payload(world.owner),
            "verify_key": "0" * 64,
            "team": None,
            "flags": (1 << 15) | (1 << 19),  # members + message content intents (limited)
            "bot": user_payload(world.bot),
            "interactions_endpoint_url": None,
            "redirect_uris": [],
        })

    async def get_member(self, call: Call) -> web.Response:
        from bot.loopback.state import member_payload

        guild = self.world.guilds.get(_snowflake(call.params["guild_id"], "guild"))
        if guild is None:
            raise _unknown("Guild", 10004)
        member = guild.members.get(_snowflake(call.params["user_id"], "user"))
        if member is None:
            raise _unknown("Member", 10007)
        return self._json(call, member_payload(member))

    # --- application commands -------------------------------------------------------------------

    def _command_scope(self, call: Call) -> tuple[int | None, dict[str, AppCommand]]:
        app_id = _snowflake(call.params["application_id"], "application")
        if app_id != self.world.application_id:
            self.world.problem(f"{call.route} for application {app_id}, not the bot's ({self.world.application_id})",
                               route=call.route)
            raise DiscordHTTPError(403, 50001, "Missing Access")
        if "guild_id" not in call.params:
            return None, self.world.global_commands
        guild_id = _snowflake(call.params["guild_id"], "guild")
        if guild_id not in self.world.guilds:
            self.world.problem(f"{call.route}: the bot is not in guild {guild_id}", route=call.route)
            raise DiscordHTTPError(403, 50001, "Missing Access")
        return guild_id, self.world.guild_commands.setdefault(guild_id, {})

    async def get_commands(self, call: Call) -> web.Response:
        _, scope = self._command_scope(call)
        return self._json(call, [command_payload(c) for c in scope.values()])

    async def put_commands(self, call: Call) -> web.Response:
        guild_id, scope = self._command_scope(call)
        if not isinstance(call.body, list):
            raise _form_error("_root", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        seen: set[tuple[str, int]] = set()
        created: dict[str, AppCommand] = {}
        for index, raw in enumerate(call.body):
            name = str(raw.get("name", ""))
            type_ = int(raw.get("type", 1))
            if not re.fullmatch(r"[-_\w]{1,32}", name) or (type_ == 1 and name != name.lower()):
                raise _form_error(f"{index}.name", "APPLICATION_COMMAND_INVALID_NAME",
                                  "Command name is invalid")
            description = str(raw.get("description", ""))
            if type_ == 1 and not 1 <= len(description) <= 100:
                raise _form_error(f"{index}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
            if (name, type_) in seen:
                raise _form_error(f"{index}.name", "APPLICATION_COMMANDS_DUPLICATE_NAME",
                                  "Application command names must be unique")
            seen.add((name, type_))
            previous = scope.get(name)
            created[name] = AppCommand(
                id=previous.id if previous is not None else self.world.snowflakes.next(),
                application_id=self.world.application_id,
                name=name,
                type=type_,
                description=description,
                options=list(raw.get("options") or []),
                guild_id=guild_id,
                raw=dict(raw),
                version=(previous.version + 1) if previous is not None else 1,
            )
        scope.clear()
        scope.update(created)
        self.world.events.append("commands_synced", guild_id=guild_id, names=sorted(created))
        return self._json(call, [command_payload(c) for c in created.values()])

    # --- interactions ---------------------------------------------------------------------------

    def track_interaction(self, interaction: Interaction) -> None:
        """Start the response deadline of an interaction just delivered to the bot."""
        loop = asyncio.get_running_loop()
        self._deadline_handles[interaction.id] = loop.call_later(
            self.interaction_deadline, self._deadline_passed, interaction
        )

    def _deadline_passed(self, interaction: Interaction) -> None:
        self._deadline_handles.pop(interaction.id, None)
        if not interaction.answered:
            interaction.late = True
            self.world.problem(
                f"interaction {interaction.id} (/{interaction.name}) not answered within "
                f"{self.interaction_deadline:g} s; Discord shows the user 'The application did not respond'",
                interaction_id=interaction.id,
            )

    def cancel_deadlines(self) -> None:
        for handle in self._deadline_handles.values():
            handle.cancel()
        self._deadline_handles.clear()

    def _new_message(self, *, channel: Channel, content: str, body: dict[str, Any], files: list[str],
                     interaction: Interaction | None = None, webhook: bool = False,
                     file_data: Sequence[bytes] = ()) -> Message:
        self._check_content(content, body, files, field="content")
        mentions = self._mentions(content, body.get("allowed_mentions"), channel)
        message = Message(
            id=self.world.snowflakes.next(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=self.world.bot,
            content=content,
            created_at=time.time(),
            mentions=mentions,
            embeds=list(body.get("embeds") or []),
            flags=int(body.get("flags") or 0),
            interaction_id=interaction.id if interaction else None,
            webhook_id=self.world.application_id if webhook else None,
            attachments=files,
        )
        message.attachment_data = list(file_data)
        self.world.messages[message.id] = message
        return message

    def _check_content(self, content: str, body: dict[str, Any], files: list[str], *, field: str) -> None:
        if len(content) > MESSAGE_LIMIT:
            self.world.problem(f"the bot sent a message of {len(content)} characters; Discord's limit is {MESSAGE_LIMIT}",
                               length=len(content))
            raise _form_error(field, "BASE_TYPE_MAX_LENGTH", f"Must be {MESSAGE_LIMIT} or fewer in length.")
        if not content and not body.get("embeds") and not files and not body.get("sticker_ids") \
                and not body.get("components") and not body.get("poll"):
            self.world.problem("the bot tried to send an empty message")
            raise DiscordHTTPError(400, 50006, "Cannot send an empty message")

    def _mentions(self, content: str, allowed: dict[str, Any] | None, channel: Channel) -> list[int]:
        ids = [int(m) for m in re.findall(r"<@!?(\d+)>", content)]
        if allowed is not None:
            parse = set(allowed.get("parse") or [])
            users = {int(u) for u in allowed.get("users") or []}
            ids = [i for i in ids if "users" in parse or i in users]
        guild = self.world.guilds.get(channel.guild_id) if channel.guild_id else None
        return [i for i in dict.fromkeys(ids) if i in self.world.users and (guild is None or i in guild.members)]

    def _interaction_by_token(self, call: Call) -> Interaction:
        interaction = self.world.interactions_by_token.get(call.params["token"])
        if interaction is None:
            self.world.problem(f"{call.route} with an unknown interaction token", route=call.route)
            raise DiscordHTTPError(404, 10015, "Unknown Webhook")
        return interaction

    async def interaction_callback(self, call: Call) -> web.Response:
        interaction_id = _snowflake(call.params["interaction_id"], "interaction")
        interaction = self.world.interactions.get(interaction_id)
        if interaction is None or interaction.token != call.params["token"]:
            self.world.problem(f"callback for unknown interaction {interaction_id}", route=call.route)
            raise DiscordHTTPError(404, 10062, "Unknown interaction")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if interaction.answered:
            self.world.problem(f"interaction {interaction.id} (/{interaction.name}) answered twice",
                               interaction_id=interaction.id)
            raise DiscordHTTPError(400, 40060, "Interaction has already been acknowledged.")
        if interaction.late or now - interaction.created_at > self.interaction_deadline:
            if not interaction.late:
                interaction.late = True
                self.world.problem(
                    f"interaction {interaction.id} (/{interaction.name}) not answered within "
                    f"{self.interaction_deadline:g} s", interaction_id=interaction.id,
                )
            # After the deadline Discord no longer knows the interaction token.
            raise DiscordHTTPError(404, 10062, "Unknown interaction")
        body = call.body or {}
        rtype = int(body.get("type", 0))
        data = body.get("data") or {}
        if rtype not in INTERACTION_RESPONSE_TYPES or rtype == 1:
            self.world.problem(f"interaction {interaction.id}: invalid response type {rtype}")
            raise _form_error("type", "BASE_TYPE_CHOICES", f"Value must be one of {sorted(INTERACTION_RESPONSE_TYPES - {1})}.")
        if rtype in COMPONENT_ONLY_TYPES and interaction.type != 3:
            self.world.problem(f"interaction {interaction.id}: response type {rtype} is only valid for component interactions")
            raise DiscordHTTPError(400, 40043, "Interaction is not a component interaction")
        if (rtype == 8) != (interaction.type == 4):
            # Autocomplete interactions take only the autocomplete result, and nothing else takes it.
            self.world.problem(f"interaction {interaction.id} (/{interaction.name}) of type {interaction.type} "
                               f"answered with response type {rtype}", interaction_id=interaction.id)
            raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                              "Interaction response type is not valid for this interaction type.")
        if rtype == 8:
            self._check_choices(interaction, data)
        if rtype == 9:
            if not data.get("custom_id") or not data.get("title") or not data.get("components"):
                raise _form_error("data", "BASE_TYPE_REQUIRED", "This field is required")
        message: Message | None = None
        channel = self.world.channels[interaction.channel_id]
        if rtype == 4:
            message = self._new_message(channel=channel, content=str(data.get("content") or ""), body=data,
                                        files=call.files, file_data=call.file_data, interaction=interaction, webhook=True)
        elif rtype == 5:
            # The "thinking" placeholder: an empty loading message the follow-up edit fills in.
            message = Message(self.world.snowflakes.next(), channel.id, channel.guild_id, self.world.bot, "",
                              time.time(), flags=LOADING | (int(data.get("flags") or 0) & EPHEMERAL),
                              interaction_id=interaction.id, webhook_id=self.world.application_id)
            self.world.messages[message.id] = message
        interaction.response_type = rtype
        interaction.responded_at = now
        interaction.response_data = data
        handle = self._deadline_handles.pop(interaction.id, None)
        if handle is not None:
            handle.cancel()
        if message is not None:
            interaction.original_message_id = message.id
            if rtype == 4 and not message.flags & EPHEMERAL:
                self._dispatch("MESSAGE_CREATE", message_payload(message, self.world))
        self.world.events.append("interaction_response", interaction_id=interaction.id, type=rtype,
                                 latency=now - interaction.created_at,
                                 content=message.content if message else None,
                                 ephemeral=bool(message and message.flags & EPHEMERAL),
                                 choices=data.get("choices") if rtype == 8 else None)
        if call.request.query.get("with_response") not in ("1", "true", "True"):
            return self._empty(call)
        result: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_loading": rtype == 5,
                "response_message_ephemeral": bool(message and message.flags & EPHEMERAL),
            },
        }
        if message is not None:
            result["interaction"]["response_message_id"] = str(message.id)
            result["resource"] = {"type": rtype, "message": message_payload(message, self.world)}
        else:
            result["resource"] = {"type": rtype}
        return self._json(call, result)

    def _check_choices(self, interaction: Interaction, data: dict[str, Any]) -> None:
        """An autocomplete result as Discord checks it: at most 25 choices, each name 1-100 characters,
        each value of the focused option's type (a string option's value 1-100 characters)."""
        choices = data.get("choices")
        where = f"interaction {interaction.id} (/{interaction.name})"

        def refuse(field: str, code: str, message: str, problem: str) -> DiscordHTTPError:
            self.world.problem(f"{where}: {problem}", interaction_id=interaction.id)
            return _form_error(field, code, message)

        if not isinstance(choices, list):
            raise refuse("data.choices", "BASE_TYPE_REQUIRED", "This field is required",
                         "an autocomplete result without a list of choices")
        if len(choices) > AUTOCOMPLETE_CHOICES:
            raise refuse("data.choices", "BASE_TYPE_MAX_LENGTH",
                         f"Must be {AUTOCOMPLETE_CHOICES} or fewer in length.",
                         f"{len(choices)} autocomplete choices; Discord allows {AUTOCOMPLETE_CHOICES}")
        kind = interaction.focused_type or 3
        for i, choice in enumerate(choices):
            name = choice.get("name") if isinstance(choice, dict) else None
            if not isinstance(name, str) or not 1 <= len(name) <= CHOICE_TEXT_LIMIT:
                raise refuse(f"data.choices.{i}.name", "BASE_TYPE_BAD_LENGTH",
                             f"Must be between 1 and {CHOICE_TEXT_LIMIT} in length.",
                             f"autocomplete choice {i} has a name of {len(name) if isinstance(name, str) else '?'} "
                             f"characters; Discord allows 1-{CHOICE_TEXT_LIMIT}")
            value = choice.get("value")
            if kind == 3:
                ok = isinstance(value, str) and 1 <= len(value) <= CHOICE_TEXT_LIMIT
            elif kind == 4:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise refuse(f"data.choices.{i}.value", "BASE_TYPE_BAD_LENGTH" if kind == 3 else "NUMBER_TYPE_COERCE",
                             f"Must be between 1 and {CHOICE_TEXT_LIMIT} in length." if kind == 3
                             else f"Value \"{value}\" is not {'int' if kind == 4 else 'number'}.",
                             f"autocomplete choice {i} has the value {value!r}, not one for an option of type {kind}")

    def _followup_message(self, call: Call, interaction: Interaction) -> Message:
        raw = call.params["message_id"]
        if raw == "@original":
            if interaction.original_message_id is None:
                self.world.problem(f"{call.route}: interaction {interaction.id} has no original response yet",
                                   route=call.route)
                raise DiscordHTTPError(404, 10008, "Unknown Message")
            message_id = interaction.original_message_id
        else:
            message_id = _snowflake(raw, "message")
        message = self.world.messages.get(message_id)
        if message is None or message.deleted or message.interaction_id != interaction.id:
            raise DiscordHTTPError(404, 10008, "Unknown Message")
        return message

    async def followup_create(self, call: Call) -> web.Response:
        interaction = self._interaction_by_token(call)
        if not interaction.answered:
            self.world.problem(f"follow-up for interaction {interaction.id} before any response",
                               interaction_id=interaction.id)
            raise DiscordHTTPError(404, 10015, "Unknown Webhook")
        body = call.body or {}
        channel = self.world.channels[interaction.channel_id]
        message = self._new_message(channel=channel, content=str(body.get("content") or ""), body=body,
                                    files=call.files, file_data=call.file_data, interaction=interaction, webhook=True)
        interaction.followup_ids.append(message.id)
        if not message.flags & EPHEMERAL:
            self._dispatch("MESSAGE_CREATE", message_payload(message, self.world))
        self.world.events.append("followup", interaction_id=interaction.id, message_id=message.id,
                                 content=message.content)
        return self._json(call, message_payload(message, self.world))

    async def followup_get(self, call: Call) -> web.Response:
        interaction = self._interaction_by_token(call)
        return self._json(call, message_payload(self._followup_message(call, interaction), self.world))

    async def followup_edit(self, call: Call) -> web.Response:
        interaction = self._interaction_by_token(call)
        message = self._followup_message(call, interaction)
        body = call.body or {}
        was_loading = bool(message.flags & LOADING)
        if "content" in body:
            content = str(body.get("content") or "")
            if len(content) > MESSAGE_LIMIT:
                self._check_content(content, body, call.files, field="content")
            message.content = content
        if "embeds" in body:
            message.embeds = list(body.get("embeds") or [])
        message.flags &= ~LOADING
        message.edited_at = None if was_loading else time.time()
        payload = message_payload(message, self.world)
        if not message.flags & EPHEMERAL:
            self._dispatch("MESSAGE_CREATE" if was_loading else "MESSAGE_UPDATE", payload)
        self.world.events.append("followup_edit", interaction_id=interaction.id, message_id=message.id,
                                 content=message.content)
        return self._json(call, payload)

    async def followup_delete(self, call: Call) -> web.Response:
        interaction = self._interaction_by_token(call)
        message = self._followup_message(call, interaction)
        message.deleted = True
        self._dispatch("MESSAGE_DELETE", {"id": str(message.id), "channel_id": str(message.channel_id),
                                          **({"guild_id": str(message.guild_id)} if message.guild_id else {})})
        return self._empty(call)

    # --- channels and messages ------------------------------------------------------------------

    async def get_channel(self, call: Call) -> web.Response:
        return self._json(call, channel_payload(self._channel(call)))

    async def get_messages(self, call: Call) -> web.Response:
        channel = self._channel(call)
        limit = min(int(call.request.query.get("limit", "50")), 100)
        messages = sorted(self.world.channel_messages(channel.id), key=lambda m: m.id, reverse=True)[:limit]
        return self._json(call, [message_payload(m, self.world) for m in messages])

    def _message_in(self, call: Call, channel: Channel) -> Message:
        message = self.world.messages.get(_snowflake(call.params["message_id"], "message"))
        if message is None or message.deleted or message.channel_id != channel.id:
            raise DiscordHTTPError(404, 10008, "Unknown Message")
        return message

    async def create_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        if channel.type in (ChannelType.CATEGORY,):
            raise DiscordHTTPError(400, 50008, "Cannot send messages in a non-text channel")
        body = call.body or {}
        reference = body.get("message_reference")
        reference_id: int | None = None
        if reference:
            ref_id = int(reference.get("message_id", 0))
            ref = self.world.messages.get(ref_id)
            if ref is None or ref.deleted or ref.channel_id != channel.id:
                if reference.get("fail_if_not_exists", True):
                    self.world.problem(f"the bot replied to message {ref_id}, which is not in channel {channel.id}")
                    raise _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
            else:
                reference_id = ref_id
        message = self._new_message(channel=channel, content=str(body.get("content") or ""), body=body,
                                    files=call.files, file_data=call.file_data)
        message.reference_id = reference_id
        payload = message_payload(message, self.world)
        self._dispatch("MESSAGE_CREATE", payload)
        self.world.events.append("message", channel_id=channel.id, message_id=message.id,
                                 content=message.content, reference_id=reference_id)
        return self._json(call, payload)

    async def get_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        return self._json(call, message_payload(self._message_in(call, channel), self.world))

    async def edit_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        message = self._message_in(call, channel)
        if message.author.id != self.world.bot.id:
            self.world.problem(f"the bot tried to edit message {message.id} written by someone else")
            raise DiscordHTTPError(403, 50005, "Cannot edit a message authored by another user")
        body = call.body or {}
        if "content" in body:
            content = str(body.get("content") or "")
            if len(content) > MESSAGE_LIMIT:
                self._check_content(content, body, call.files, field="content")
            message.content = content
        message.edited_at = time.time()
        payload = message_payload(message, self.world)
        self._dispatch("MESSAGE_UPDATE", payload)
        self.world.events.append("message_edit", channel_id=channel.id, message_id=message.id, content=message.content)
        return self._json(call, payload)

    async def delete_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        message = self._message_in(call, channel)
        message.deleted = True
        self._dispatch("MESSAGE_DELETE", {"id": str(message.id), "channel_id": str(channel.id),
                                          **({"guild_id": str(channel.guild_id)} if channel.guild_id else {})})
        return self._empty(call)

    async def typing(self, call: Call) -> web.Response:
        channel = self._channel(call)
        self.world.events.append("typing", channel_id=channel.id)
        return self._empty(call)

    async def voice_status(self, call: Call) -> web.Response:
        channel = self._channel(call)
        if channel.type != ChannelType.VOICE:
            raise DiscordHTTPError(400, 50024, "Cannot execute action on this channel type")
        status = (call.body or {}).get("status")
        if status is not None and len(str(status)) > 500:
            raise _form_error("status", "BASE_TYPE_MAX_LENGTH", "Must be 500 or fewer in length.")
        channel.status = status
        self.world.events.append("voice_status", channel_id=channel.id, status=status)
        return self._empty(call)


def new_interaction_token() -> str:
    """An interaction token: opaque, URL-safe, long like Discord's."""
    return "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
