"""What a submission's body may hold, checked the same for the API and the web form.

Every string a client sends must be text the store can keep and a reply can carry (no lone
surrogates, no NUL); tags are 2 to 100 characters; a `hardware_config` timeout is a positive
number of hours.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = [
    "MAX_ID",
    "MAX_REQUEST_BYTES",
    "SUPPORTED_PLATFORMS",
    "SubmittedJob",
    "TextBody",
    "check_tags",
    "check_text",
    "unsupported_platform",
]

SUPPORTED_PLATFORMS = ("SpiNNaker",)


def unsupported_platform(name: str) -> str | None:
    """Why a job for platform `name` cannot run here, or None if it can."""
    if name in SUPPORTED_PLATFORMS:
        return None
    return (
        f"hardware platform {name!r} is not available here"
        f" (this service runs {', '.join(SUPPORTED_PLATFORMS)})"
    )


MAX_ID = 2**63 - 1
"""The largest id the database holds: larger ones name no job."""

MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""The largest request body the service reads (413 beyond): code larger than this (an
archive sent inline is base64, a third larger) goes by URL."""


def check_text(value: Any, where: str) -> None:
    """Refuse text the database or a reply cannot carry (lone surrogates, NUL), anywhere in
    `value` (strings, and the keys and items of dicts and lists).

    Raises:
        ValueError: naming `where`.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where} is not valid UTF-8 text") from None
        if "\x00" in value:
            raise ValueError(f"{where} holds a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, where)
            check_text(item, f"{where} {key!r}" if isinstance(key, str) else where)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_text(item, where)


def check_tags(tags: list[str]) -> list[str]:
    """Tags stripped, each 2 to 100 characters of text (ValueError otherwise)."""
    stripped = [t.strip() for t in tags]
    for tag in stripped:
        check_text(tag, "a tag")
        if not 2 <= len(tag) <= 100:
            raise ValueError(f"tag {tag!r} must be 2 to 100 characters long")
    return stripped


class TextBody(BaseModel):
    """A request body: every string in it is text the store can keep."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="after")
    def _text(self) -> TextBody:
        for name, value in self:
            check_text(value, name)
        return self


class SubmittedJob(TextBody):
    """The body of `POST /jobs/` (extra keys ignored, as the real service does)."""

    code: str
    collab: str
    hardware_platform: str
    command: str | None = None
    hardware_config: dict[str, Any] | None = None
    tags: list[str] | None = None
    input_data: list[dict[str, Any]] | None = None

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str] | None) -> list[str] | None:
        return None if tags is None else check_tags(tags)

    @field_validator("input_data")
    @classmethod
    def _inputs(cls, items: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for item in items or ():
            url = item.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError("each input_data item needs a url, http:// or https://")
        return items

    @field_validator("hardware_config")
    @classmethod
    def _config(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        if config is not None and "timeout" in config:
            if isinstance(config["timeout"], bool):  # float(True) is 1.0: no number of hours
                raise ValueError("hardware_config timeout must be a number of hours")
            try:
                hours = float(config["timeout"])
            except (TypeError, ValueError):
                raise ValueError("hardware_config timeout must be a number of hours") from None
            if not (math.isfinite(hours) and hours > 0):
                raise ValueError("hardware_config timeout must be a positive number of hours")
        return config
