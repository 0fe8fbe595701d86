"""TPM layer: TPM 2.0 structures, credential activation, EK certificates and swtpm."""
