"""The errors mmxai raises on purpose: each names the thing and the cause in one line."""


class MMXAIError(Exception):
    """Base class: a problem the user can act on, printed without a traceback by the CLI."""


class UnknownNameError(MMXAIError, KeyError):
    """A model, method, metric or dataset name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(MMXAIError):
    """Two plugins registered the same name."""


class UnsupportedModelError(MMXAIError):
    """A model whose architecture no adapter handles."""


class InputError(MMXAIError):
    """Bad input: a missing or corrupt image, a mask of the wrong size, and so on."""
