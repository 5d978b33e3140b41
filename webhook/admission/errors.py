"""What the server answers for input it cannot review."""


class BadReview(Exception):
    """The body is not a reviewable AdmissionReview; `status` is the HTTP status (4xx)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
