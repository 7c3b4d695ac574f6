"""Exceptions the library raises; the CLI turns each into one sentence on stderr.

Every message is written for a user, not a developer: it says what is wrong and,
where it can, what to do instead.
"""


class CharrnnError(Exception):
    """Base class for every error charrnn reports to a user."""


class CorpusError(CharrnnError):
    """The training or evaluation text cannot be read or is unusable."""


class VocabularyError(CharrnnError):
    """Text contains characters the vocabulary cannot encode, or the vocabulary is too big."""

    def __init__(self, message: str, unknown: tuple[str, ...] = (), count: int = 0):
        super().__init__(message)
        self.unknown = unknown
        self.count = count


class CheckpointError(CharrnnError):
    """A checkpoint is missing, corrupt, unsafe, or from an unknown format version."""


class ConfigError(CharrnnError):
    """Options that cannot work together (e.g. a corpus too short for the requested batch)."""


class Interrupted(CharrnnError):
    """A signal arrived before training had started: nothing was saved or changed."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
