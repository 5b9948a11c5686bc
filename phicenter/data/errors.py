"""The one error of the data package."""


class DataError(ValueError):
    """A dataset that cannot be read: the message names the folder/file and what was expected."""
