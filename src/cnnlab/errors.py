"""The one exception type for a user's mistake.

Library code raises :class:`CnnlabError` with a sentence that says what is wrong and how to fix it; the
command line prints that sentence and exits with status 2, without a traceback.

A sentence about one of the library's parameters names it as a Python caller wrote it (``batch_size``) and
lists it in ``params``; the command line, which took it as a flag, says the flag instead (``--batch-size``)
through :meth:`CnnlabError.speak`, with its one mapping from parameters to flags.
"""

from __future__ import annotations

import re
from typing import Callable


class CnnlabError(ValueError):
    """A mistake in what the user asked for (unknown model, bad shape, impossible geometry, ...)."""

    def __init__(self, message: str, *, params: tuple[str, ...] = ()):
        super().__init__(message)
        self.params = tuple(params)

    def speak(self, name_of: Callable[[str], str]) -> str:
        """The sentence with every parameter in ``params`` renamed by ``name_of`` (e.g. to its flag)."""
        text = str(self)
        for p in sorted(self.params, key=len, reverse=True):
            text = re.sub(rf"(?<![\w-]){re.escape(p)}(?![\w-])", name_of(p), text)
        return text
