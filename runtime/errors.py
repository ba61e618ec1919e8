"""One error family for the whole runtime.

Every error a user can see derives from :class:`MixmergeError`. Each class carries the HTTP status and the OpenAI
error ``type`` it maps to, so the server has one exception handler and the CLI prints one line (cause and fix).
"""

from __future__ import annotations


class MixmergeError(Exception):
    """Base of every user-facing error: ``message`` says what is wrong, ``fix`` what to change."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str, *, fix: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.param = param

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message

    def __reduce__(self):
        """Pickled whole (fix, param, a subclass's own fields), e.g. from a child process that built a model: the
        default would call ``cls(*args)`` and lose the keywords."""
        return _rebuilt, (type(self), self.args, dict(self.__dict__))

    def to_openai(self) -> dict[str, object]:
        """The OpenAI wire shape: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": str(self),
                "type": self.error_type,
                "param": self.param,
                "code": self.status_code,
            }
        }


class ConfigError(MixmergeError):
    """A YAML file or a ``key=value`` override is invalid. ``problems`` lists every error at once."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} error(s)\n{listing}")


class BadRequestError(MixmergeError):
    status_code = 400
    error_type = "invalid_request_error"


class ModelNotFoundError(MixmergeError):
    status_code = 404
    error_type = "not_found_error"


class ModelStoreError(MixmergeError):
    """Fetching, verifying, converting or registering a model failed."""

    status_code = 500
    error_type = "internal_error"


class HubUnreachableError(ModelStoreError):
    status_code = 503
    error_type = "service_unavailable"


class PayloadTooLargeError(MixmergeError):
    status_code = 413
    error_type = "invalid_request_error"


class MethodNotAllowedError(MixmergeError):
    status_code = 405
    error_type = "invalid_request_error"


class ConflictError(MixmergeError):
    """The request is valid but clashes with the server's state (e.g. unloading a deployment's own expert)."""

    status_code = 409
    error_type = "conflict_error"


class AuthenticationError(MixmergeError):
    status_code = 401
    error_type = "authentication_error"


class QueueFullError(MixmergeError):
    status_code = 429
    error_type = "rate_limit_error"


class EngineUnavailableError(MixmergeError):
    status_code = 503
    error_type = "service_unavailable"


class UpstreamTimeoutError(MixmergeError):
    status_code = 504
    error_type = "timeout"


def _rebuilt(cls: type, args: tuple, state: dict) -> MixmergeError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error
