"""Where a text file stops being UTF-8: the real line number, for one-line DataErrors.

A text-mode reader decodes ahead of the line it yields (blocks of 8 KiB), so the line count at the moment a
UnicodeDecodeError surfaces is not the line of the bad byte. The stream is scanned again, line by line in
binary, to find it: a multi-byte character never spans a newline (b"\\n" is never part of one), so decoding
line by line finds exactly the bytes a whole-file decode rejects.
"""

from __future__ import annotations

from typing import IO, Optional, Tuple


def first_invalid_line(raw: IO[bytes]) -> Optional[Tuple[int, str]]:
    """(1-based line number, reason) of the first line of a binary stream that is not UTF-8; None if all are."""
    for number, line in enumerate(raw, 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            return number, f"byte 0x{line[error.start]:02x}: {error.reason}"
    return None
