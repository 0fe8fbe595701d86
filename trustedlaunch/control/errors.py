"""The one error type of the control plane, shaped like an ARM error (code, message, target, details)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trustedlaunch.errors import TrustedLaunchError


@dataclass
class ArmError(TrustedLaunchError):
    """An error an operator can act on; `status` is the HTTP status the API answers with."""

    status: int
    code: str
    message: str
    target: str | None = None
    details: list[ArmError] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_body(self) -> dict[str, object]:
        """The ARM error envelope `{"error": {...}}`."""
        return {"error": self.to_detail()}

    def to_detail(self) -> dict[str, object]:
        """The inner error object (also the shape of each entry in `details`)."""
        return {
            "code": self.code,
            "message": self.message,
            "target": self.target,
            "details": [detail.to_detail() for detail in self.details],
        }


def not_found(code: str, message: str, target: str | None = None) -> ArmError:
    """A 404 error."""
    return ArmError(404, code, message, target)


def conflict(code: str, message: str, target: str | None = None) -> ArmError:
    """A 409 error."""
    return ArmError(409, code, message, target)


def bad_request(code: str, message: str, target: str | None = None) -> ArmError:
    """A 400 error."""
    return ArmError(400, code, message, target)
