"""trustedlaunch: self-hostable Trusted Launch (Secure Boot, vTPM, remote attestation) for node pools."""

__version__ = "0.1.0"
