"""The OpenAI wire format, shared by the SelFee endpoint and the offline teacher.

Everything a client sends passes through here before any model sees it: the body is read
with a size limit, parsed as JSON with a nesting limit, and validated by a pydantic model
per endpoint. Anything wrong becomes an ``APIError`` (a 4xx with an OpenAI error body that
names the field); nothing a client sends may reach the model and fail there.

Bounds (the same for both servers; the SelFee endpoint narrows two of them per model):

============== ============================ =================================================
field          accepted                     note
============== ============================ =================================================
messages       1-4096 messages              role system / developer / user / assistant;
                                            content a string (text parts are joined)
prompt         a non-empty string           or a list holding exactly one
max_tokens     1 … 1,000,000                SelFee endpoint: 1 … the model's context
temperature    0 … 2, finite                below 1e-5 sampling is greedy (as vLLM does)
top_p          above 0, at most 1
seed           -2^63 … 2^63-1
n              1                            one chain per request
stop           a string or up to 4 strings
stream         true / false
stream_content "chain" / "final_answer"     what a stream's ``content`` deltas carry
min_revisions  0 … 100                      SelFee endpoint: 0 … ``max_revisions_limit``
max_revisions  0 … 100, ≥ min_revisions     likewise
============== ============================ =================================================

Every string must be valid Unicode (a lone UTF-16 surrogate such as ``"\\ud800"`` is
refused); bodies over ``MAX_BODY_BYTES`` get 413; JSON nested deeper than
``MAX_JSON_DEPTH`` gets 400. Unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterable
from typing import Annotated, Any, Literal, TypeVar

from annotated_types import Ge, Gt, Le
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from selfee.revision import GREEDY_BELOW

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 32
MAX_TOKENS = 1_000_000  # the SelFee endpoint narrows these two (``validate``'s context)
MAX_REVISIONS = 100
ROLES = ("system", "developer", "user", "assistant")


class APIError(Exception):
    """A client error with its OpenAI error body; never carries a key."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


def error_response(error: APIError, headers: dict[str, str] | None = None) -> Any:
    """The error as an HTTP response (both servers are FastAPI apps)."""
    from fastapi.responses import JSONResponse

    return JSONResponse(error.body(), status_code=error.status, headers=headers)


# --- reading a body -------------------------------------------------------------------


async def read_body(
    chunks: AsyncIterable[bytes], content_length: str | None, max_bytes: int = MAX_BODY_BYTES
) -> Any:
    """The request's JSON, read at most ``max_bytes`` far (413 past that)."""
    too_big = APIError(413, f"the request body is over {max_bytes:,} bytes", code="too_large")
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        raise too_big
    raw = bytearray()
    async for chunk in chunks:
        raw += chunk
        if len(raw) > max_bytes:
            raise too_big
    return parse_json(bytes(raw))


def parse_json(raw: bytes) -> Any:
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise APIError(400, f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError:  # also bytes that are not UTF-8 (UnicodeDecodeError)
        raise APIError(400, "the request body is not valid JSON") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise APIError(400, f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep")
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """Nesting depth, without recursion (a deep value must not overflow the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]
    return deepest


# --- the request models ---------------------------------------------------------------


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"is not valid Unicode (a lone surrogate at character {e.start})"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: Text

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, content: Any) -> Any:
        """Content as a list of ``{"type": "text", "text": ...}`` parts is their text."""
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            return "".join(p["text"] for p in content)
        return content


class SamplingRequest(BaseModel):
    """Fields both endpoints share. ``context`` of validation may narrow two bounds:
    ``max_tokens`` (the model's context) and ``max_revisions`` (the server's limit)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Text | None = None
    stream: StrictBool = False
    stream_content: Literal["chain", "final_answer"] = "chain"
    n: int = 1
    max_tokens: int | None = None
    temperature: Annotated[float, Ge(0), Le(2), Field(allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Gt(0), Le(1), Field(allow_inf_nan=False)] = 1.0
    seed: Annotated[int, Ge(-(2**63)), Le(2**63 - 1)] | None = None
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    min_revisions: int = 0
    max_revisions: int | None = None

    @field_validator("max_tokens", "max_completion_tokens", check_fields=False)
    @classmethod
    def _within_context(cls, value: int | None, info: ValidationInfo) -> int | None:
        high = (info.context or {}).get("max_context") or MAX_TOKENS
        if value is not None and not 1 <= value <= high:
            raise ValueError(f"must be between 1 and {high} (got {value})")
        return value

    @field_validator("n")
    @classmethod
    def _one_chain(cls, value: int) -> int:
        if value != 1:
            raise ValueError("must be 1: one chain per request")
        return value

    @field_validator("min_revisions", "max_revisions")
    @classmethod
    def _within_revision_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        high = (info.context or {}).get("max_revisions") or MAX_REVISIONS
        if value is not None and not 0 <= value <= high:
            raise ValueError(f"must be between 0 and {high} (got {value})")
        low = info.data.get("min_revisions")
        if (
            info.field_name == "max_revisions"
            and value is not None
            and low is not None
            and low > value
        ):
            raise ValueError(f"min_revisions ({low}) is above max_revisions ({value})")
        return value

    def greedy_temperature(self, default: float = 0.0) -> float:
        """The temperature to sample with: tiny ones (1e-300) are greedy, never a division
        that overflows."""
        value = default if self.temperature is None else self.temperature
        return 0.0 if value < GREEDY_BELOW else value

    @property
    def wanted_tokens(self) -> int | None:
        return self.max_tokens

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(SamplingRequest):
    messages: Annotated[list[Message], Field(min_length=1, max_length=4096)]
    max_completion_tokens: int | None = None

    @property
    def wanted_tokens(self) -> int | None:  # the newer name wins, as OpenAI's API does
        return self.max_completion_tokens or self.max_tokens


class CompletionsRequest(SamplingRequest):
    prompt: (
        Annotated[Text, Field(min_length=1)]
        | Annotated[list[Annotated[Text, Field(min_length=1)]], Field(min_length=1, max_length=1)]
    )

    @property
    def prompt_text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt


Request = TypeVar("Request", bound=SamplingRequest)


def validate(model: type[Request], body: Any, **context: Any) -> Request:
    """The request as ``model``, or an ``APIError`` naming the first field at fault."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(body, context=context)
    except ValidationError as e:
        raise _api_error(model, e.errors(include_url=False)[0]) from None


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a finite number",
    "finite_number": "a finite number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "an object",
    "model": "an object",
}


def _api_error(model: type[BaseModel], error: dict[str, Any]) -> APIError:
    loc = [part for part in error["loc"] if not _is_union_branch(part)]
    top = str(loc[0]) if loc else None
    param = _path(loc)
    shown = f"'{param}'" if len(loc) == 1 else param
    kind, got = error["type"], _shown(error.get("input"))
    if top == "messages" and (len(loc) == 1 or kind in ("model_type", "dict_type")):
        message = "'messages' must be a non-empty list of messages"
        if kind == "too_long":
            message = "'messages' may hold at most 4096 messages"
    elif top == "messages" and loc[-1] == "role":
        message = f"{_path(loc[:-1])} needs a 'role' among {', '.join(ROLES)}"
    elif top == "n":
        message = "'n' must be 1: one chain per request"
    elif top == "prompt" and kind in (
        "string_too_short",
        "too_short",
        "string_type",
        "list_type",
        "too_long",
        "missing",
    ):
        message = "'prompt' must be a non-empty string (or a list of one)"
    elif kind == "missing":
        message = f"{shown} is required"
    elif top == "stop" and kind != "value_error":
        message = "'stop' must be a string or a list of at most 4 strings"
    elif kind == "value_error":
        said = str(error["ctx"]["error"])
        message = f"{shown} {said}" if said.startswith(("must", "is ")) and loc else said
    elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        low, high = _bounds(model, top or "")
        message = f"{shown} must be between {low} and {high} (got {got})"
        if kind == "greater_than":
            message = f"{shown} must be above {error['ctx']['gt']} (got {got})"
    elif kind == "too_long":
        message = f"{shown} may hold at most {error['ctx']['max_length']} items"
    elif kind in ("string_too_short", "too_short"):
        message = f"{shown} must not be empty"
    else:
        word = next((w for k, w in _TYPE_WORDS.items() if kind.startswith(k)), None)
        message = f"{shown} must be {word} (got {got})" if word else f"{shown}: {error['msg']}"
        if kind == "bool_type":
            message = f"{shown} must be true or false"
    return APIError(400, message, param or None)


def _is_union_branch(part: Any) -> bool:
    """pydantic names the union member it tried (``'list[...]'``, ``'function-after[...]'``)."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "none"))


def _path(loc: list[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _bounds(model: type[BaseModel], name: str) -> tuple[Any, Any]:
    low = high = None
    field = model.model_fields.get(name)
    for item in _metadata(field.annotation) + list(field.metadata) if field else []:
        low = getattr(item, "ge", None) if getattr(item, "ge", None) is not None else low
        low = getattr(item, "gt", None) if getattr(item, "gt", None) is not None else low
        high = getattr(item, "le", None) if getattr(item, "le", None) is not None else high
    return low, high


def _metadata(annotation: Any) -> list[Any]:
    """Constraints inside ``Annotated[...] | None``."""
    found = list(getattr(annotation, "__metadata__", ()))
    for arg in getattr(annotation, "__args__", ()):
        found += _metadata(arg)
    return found


# --- the bearer key -------------------------------------------------------------------


def key_sha256(key: str | None) -> str | None:
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def bearer_token(authorization: str | None) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (the scheme is case-insensitive, RFC 7235);
    None without the scheme: a bare key is no credential."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def bearer_matches(authorization: str | None, expected_sha256: str) -> bool:
    """Compared by hash, in constant time."""
    token = bearer_token(authorization)
    if token is None:
        return False
    sent = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
    return hmac.compare_digest(sent, expected_sha256)
