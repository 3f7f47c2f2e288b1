"""Opaque page tokens: an offset bound to a digest of the request's filters."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from mesh.status import raise_for_violations

_PAGING_FIELDS: Final = ("page_size", "page_token")
_FORMAT: Final = ">8sQ"  # 8 digest bytes, then the offset
_T = TypeVar("_T")


def filters_digest(request: Any) -> bytes:
    """8 bytes identifying the request's filters (paging fields left out)."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in _PAGING_FIELDS:
        if name in copy.DESCRIPTOR.fields_by_name:
            copy.ClearField(name)
    return hashlib.blake2b(copy.SerializeToString(deterministic=True), digest_size=8).digest()


def next_token(request: Any, offset: int) -> str:
    """The token of the page starting at ``offset`` of ``request``'s result."""
    return base64.urlsafe_b64encode(struct.pack(_FORMAT, filters_digest(request), offset)).decode()


def page_offset(request: Any) -> int:
    """Where the page ``request.page_token`` names starts; INVALID_ARGUMENT ``page_token`` if foreign."""
    token = request.page_token
    if not token:
        return 0
    try:
        digest, offset = struct.unpack(_FORMAT, base64.urlsafe_b64decode(token.encode()))
    except (ValueError, struct.error, binascii.Error):
        raise_for_violations([("page_token", "not a token this server issued")])
        raise AssertionError("unreachable") from None
    if digest != filters_digest(request):
        raise_for_violations([("page_token", "only valid with the same filters")])
    return int(offset)


def page_size(request: Any, default: int, maximum: int) -> int:
    """The page size asked for: 0 → ``default``, capped at ``maximum``; negative is INVALID_ARGUMENT."""
    if request.page_size < 0:
        raise_for_violations([("page_size", "must not be negative")])
    return min(request.page_size or default, maximum)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list request: where it starts, how long it is, and how its token is made."""

    request: Any
    offset: int
    limit: int

    @property
    def fetch(self) -> int:
        """Rows to read: one more than the page, which tells whether another page follows."""
        return self.limit + 1

    def split(self, rows: Sequence[_T]) -> tuple[Sequence[_T], str]:
        """The page's rows of ``fetch`` read, and the next page's token ("" on the last page)."""
        if len(rows) > self.limit:
            return rows[: self.limit], next_token(self.request, self.offset + self.limit)
        return rows, ""


def page_of(request: Any, default: int, maximum: int) -> Page:
    """The page ``request`` asks for (its token and size checked; see page_offset and page_size)."""
    return Page(request, page_offset(request), page_size(request, default, maximum))
