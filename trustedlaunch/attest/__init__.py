"""Attestation layer: quote verification, AK/EK binding, policy and integrity alerts."""
