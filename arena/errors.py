"""The one base of every error that a user's input causes: the CLI turns any ``ArenaError`` into exit code 2."""


class ArenaError(Exception):
    """Bad input (a scenario, a plugin, data, a results store): the message names the file or field and the fix."""


class StoreError(ArenaError):
    """A results store or run that does not exist; the message says what does."""
