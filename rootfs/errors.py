"""The one exception the rootfs package raises."""


class RootfsError(Exception):
    """A build or lookup failed; str() is one line naming the problem and the fix."""

    def __init__(self, message: str) -> None:
        # Callers print this as a single CLI error line, so newlines from
        # nested errors (urllib, subprocess) must not split it.
        super().__init__(" ".join(str(message).splitlines()))
