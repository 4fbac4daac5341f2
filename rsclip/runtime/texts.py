"""Text from outside (a query, a note, a request's JSON): one check that it is characters at all.

JSON may carry a lone UTF-16 surrogate (``"\\ud800"``); Python keeps it in a ``str``, but no tokenizer, Arrow
string or file encoding takes it, and each fails in its own way. Callers check text with
:func:`check_characters` where it comes in, so the caller hears which text is wrong and where.
"""

from __future__ import annotations

from rsclip.errors import InvalidInput


def check_characters(text: str, what: str) -> str:
    """``text`` when every code point of it is a character (UTF-8 can encode it). Raises ``InvalidInput`` naming
    ``what`` and the position of the first lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} holds {text[exc.start]!r} at character {exc.start + 1}, which is not a "
                           "character (a lone surrogate)") from None
    return text
