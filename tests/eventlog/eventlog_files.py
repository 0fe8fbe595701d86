"""The binary event logs of the shared test data, by path relative to the test data folder."""

from __future__ import annotations

GO_TPM_TOOLS_LOGS = [
    "go-tpm-tools/eventlogs/arch-linux-workstation.bin",
    "go-tpm-tools/eventlogs/confidential-gke-debug-251000_eventlog.bin",
    "go-tpm-tools/eventlogs/cos-101-amd-sev.bin",
    "go-tpm-tools/eventlogs/cos-85-amd-sev.bin",
    "go-tpm-tools/eventlogs/cos-93-amd-sev.bin",
    "go-tpm-tools/eventlogs/debian-10.bin",
    "go-tpm-tools/eventlogs/eventlogwithsp800155.bin",
    "go-tpm-tools/eventlogs/gdc-host.bin",
    "go-tpm-tools/eventlogs/glinux-alex.bin",
    "go-tpm-tools/eventlogs/rhel8-uefi.bin",
    "go-tpm-tools/eventlogs/ubuntu-1804-amd-sev.bin",
    "go-tpm-tools/eventlogs/ubuntu-2104-no-dbx.bin",
    "go-tpm-tools/eventlogs/ubuntu-2104-no-secure-boot.bin",
    "go-tpm-tools/eventlogs/ubuntu-2404-amd-sevsnp.bin",
]
GO_ATTESTATION_LOGS = [
    "go-attestation/coreos_36_shielded_vm_no_secure_boot_eventlog",
    "go-attestation/crypto_agile_eventlog",
    "go-attestation/ebs_event_missing_eventlog",
    "go-attestation/option_rom_eventlog",
    "go-attestation/sb_cert_eventlog",
    "go-attestation/short_no_action_eventlog",
    "go-attestation/ubuntu_2104_shielded_vm_no_secure_boot_eventlog",
    "go-attestation/windows_gcp_shielded_vm.eventlog.bin",
]
KEYLIME_LOGS = [
    "keylime/binary_bios_measurements",
    "keylime/binary_bios_measurements-secureboot",
    "keylime/mb_log.bin",
]
TPM2_TOOLS_LOGS = [
    "tpm2-tools/event-arch-linux.bin",
    "tpm2-tools/event-bootorder.bin",
    "tpm2-tools/event-gce-ubuntu-2104-log.bin",
    "tpm2-tools/event-moklisttrusted.bin",
    "tpm2-tools/event-postcode.bin",
    "tpm2-tools/event-sd-boot-fedora37.bin",
    "tpm2-tools/event-uefi-sha1-log.bin",
    "tpm2-tools/event-uefiaction.bin",
    "tpm2-tools/event-uefiservices.bin",
    "tpm2-tools/event-uefivar.bin",
    "tpm2-tools/event.bin",
    "tpm2-tools/specid-vendordata.bin",
]
QEMU_OVMF_LOGS = [
    "qemu-ovmf/ovmf_evlog.bin",
    "qemu-ovmf/sb_evlog.bin",
    "qemu-ovmf/shim_evlog.bin",
]
ALL_LOGS = GO_TPM_TOOLS_LOGS + GO_ATTESTATION_LOGS + KEYLIME_LOGS + TPM2_TOOLS_LOGS + QEMU_OVMF_LOGS

# Logs that start at locality 3 (EV_NO_ACTION StartupLocality), per the upstream test data notes.
STARTUP_LOCALITY_3_LOGS = [
    "go-tpm-tools/eventlogs/gdc-host.bin",
    "go-tpm-tools/eventlogs/glinux-alex.bin",
    "go-attestation/short_no_action_eventlog",
    "keylime/binary_bios_measurements",
]
