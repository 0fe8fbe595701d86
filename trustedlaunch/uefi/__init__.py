"""UEFI layer: varstores, signature databases, Authenticode, SBAT and the Secure Boot decision."""
