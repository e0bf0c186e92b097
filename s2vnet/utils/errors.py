"""The one exception type for bad user input.

Every check on user-supplied data (files, arrays, clicks, configs) raises :class:`InputError`
with a message that names the file or value and says what is wrong, so that users never have
to decode a traceback from deep inside nibabel, SimpleITK or PyTorch.
"""


class InputError(ValueError):
    """User input (a file, an array, a click, a config value) is invalid.

    The message always names the offending file or value and states the problem.
    """
