"""The one exception type for a user's mistake.

Library code raises :class:`CnnlabError` with a sentence that says what is wrong and how to fix it; the
command line prints that sentence and exits with status 2, without a traceback.
"""


class CnnlabError(ValueError):
    """A mistake in what the user asked for (unknown model, bad shape, impossible geometry, ...)."""
