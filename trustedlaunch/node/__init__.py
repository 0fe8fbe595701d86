"""Node layer: Trusted Launch node images, the QEMU node VM driver and its in-guest attestation agent."""
