"""The one exception type the engine raises for bad input.

Every message is a single plain sentence, so the CLI and the app can show it as is.
"""


class LensError(ValueError):
    """Bad input or an unusable model, explained in one line for a person."""
