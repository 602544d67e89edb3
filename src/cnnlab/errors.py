"""The one exception type for a user's mistake.

Library code raises :class:`CnnlabError` with a sentence that says what is wrong and how to fix it; the
command line prints that sentence and exits with status 2, without a traceback.

A sentence about one of the library's parameters writes its name in backticks and lists it in ``params``:
``CnnlabError("`lr` must be positive, got -1", params=("lr",))``. A Python caller reads it as it wrote it
(``lr must be positive, got -1``); the command line, which took it as a flag, says the flag instead
(``--lr must be positive``) through :meth:`CnnlabError.speak`, with its one mapping from parameters to flags.
Notes that are not mistakes (:class:`CnnlabNote`) are warnings, written and spoken the same way.
"""

from __future__ import annotations

import re
from typing import Callable


def _render(template: str, params: tuple[str, ...], name_of: Callable[[str], str]) -> str:
    return re.sub(r"`(\w+)`", lambda m: name_of(m.group(1)) if m.group(1) in params else m.group(0), template)


class CnnlabError(ValueError):
    """A mistake in what the user asked for (unknown model, bad shape, impossible geometry, ...)."""

    def __init__(self, message: str, *, params: tuple[str, ...] = ()):
        self.template, self.params = message, tuple(params)
        super().__init__(_render(message, self.params, str))

    def speak(self, name_of: Callable[[str], str]) -> str:
        """The sentence with every parameter of ``params`` named by ``name_of`` (e.g. its flag)."""
        return _render(self.template, self.params, name_of)


class CnnlabNote(UserWarning):
    """Something the user should know that is not a mistake (e.g. a resumed schedule that stretches); issued
    with :func:`warnings.warn`, and written like a :class:`CnnlabError`."""

    def __init__(self, message: str, *, params: tuple[str, ...] = ()):
        self.template, self.params = message, tuple(params)
        super().__init__(_render(message, self.params, str))

    speak = CnnlabError.speak
