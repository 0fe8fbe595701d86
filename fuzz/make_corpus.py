"""Rebuild the seed corpora in fuzz/corpus/<target>/ from real data (committed; run again only to refresh).

    .venv/bin/python fuzz/make_corpus.py [--testdata ../shared/testdata]

Seeds: the real third-party event logs and GCE attestations, TPM structures made by a real swtpm with
tpm2-tools (RSA and ECC keys, quotes, signatures), small real EFI binaries (efitools, shim's fallback) and
one signed by sbsign, the signature lists and varstores of Debian's OVMF, grub's and shim's SBAT sections,
evidence quoted by swtpm over a real log and policies derived from real logs. Seeds are named
`seed-<what>`; entries the fuzzer found (kept by `run.py --merge`) are named by their SHA-1.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fuzz_targets import CORPUS_DIR, TARGETS

from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evidence import collect_evidence, extend_event_log
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.tpm.structures import encode_pcr_selection_list, parse_tpms_attest
from trustedlaunch.tpm.swtpm import Swtpm
from trustedlaunch.uefi.authenticode import load_pe_image
from trustedlaunch.uefi.varstore import read_varstore

REPO = Path(__file__).resolve().parent.parent
OVMF = Path("/usr/share/OVMF")
EFITOOLS = Path("/usr/lib/efitools/x86_64-linux-gnu")
SMALL_EFI = (EFITOOLS / "SetNull.efi", EFITOOLS / "HelloWorld.efi", Path("/usr/lib/shim/fbx64.efi.signed"))
SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
GRUB = Path("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed")


def _write(target: str, name: str, data: bytes) -> None:
    folder = CORPUS_DIR / target
    folder.mkdir(parents=True, exist_ok=True)
    if len(data) > TARGETS[target].max_len:
        raise SystemExit(f"seed {target}/{name} is {len(data)} bytes, above the target's max_len")
    (folder / f"seed-{name}").write_bytes(data)


def _real_logs(testdata: Path) -> list[Path]:
    logs = [*testdata.glob("*/eventlogs/*.bin"), *testdata.glob("qemu-ovmf/*.bin")]
    logs += [*testdata.glob("tpm2-tools/*.bin"), *testdata.glob("keylime/*")]
    logs += [p for p in testdata.glob("go-attestation/*") if "eventlog" in p.name]
    return sorted(p for p in logs if p.suffix not in (".b64", ".json", ".warn") and p.name != "LICENSE")


def eventlog_seeds(testdata: Path) -> None:
    for path in _real_logs(testdata):
        data = path.read_bytes()
        if len(data) <= TARGETS["eventlog"].max_len:
            _write("eventlog", f"{path.parent.name}-{path.name}", data)


def tpm_seeds(work: Path) -> None:
    """Keys, quotes and signatures from a real swtpm (selector byte first, see fuzz_targets.TPM_PARSERS)."""
    with Swtpm() as tpm:
        for alg in ("rsa", "ecc"):
            tpm.run(["tpm2_createek", "-c", "ek.ctx", "-G", alg, "-u", f"ek-{alg}.pub"], cwd=work)
            tpm.flush_transient_objects()
            tpm.run(
                ["tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", alg, "-u", f"ak-{alg}.pub"], cwd=work
            )
            tpm.flush_transient_objects()
            quote = [
                "tpm2_quote",
                "-c",
                "ak.ctx",
                "-l",
                "sha1:0,7+sha256:0,1,2,3,4,5,6,7,14",
                "-q",
                "0badc0de",
            ]
            tpm.run([*quote, "-m", f"quote-{alg}.attest", "-s", f"quote-{alg}.sig"], cwd=work)
            tpm.flush_transient_objects()
            attest = (work / f"quote-{alg}.attest").read_bytes()
            _write("tpm", f"attest-{alg}", b"\x00" + attest)
            _write("tpm", f"tpmt-public-ak-{alg}", b"\x01" + (work / f"ak-{alg}.pub").read_bytes()[2:])
            _write("tpm", f"tpm2b-public-ak-{alg}", b"\x02" + (work / f"ak-{alg}.pub").read_bytes())
            _write("tpm", f"tpm2b-public-ek-{alg}", b"\x02" + (work / f"ek-{alg}.pub").read_bytes())
            _write("tpm", f"signature-{alg}", b"\x03" + (work / f"quote-{alg}.sig").read_bytes())
            quote_info = parse_tpms_attest(attest).quote
            assert quote_info is not None
            selection = encode_pcr_selection_list(quote_info.pcr_select)
            _write("tpm", f"pcr-selection-{alg}", b"\x04" + selection)


def pe_seeds(work: Path) -> None:
    for path in SMALL_EFI:
        _write("pe", path.name, path.read_bytes())
    key, cert = work / "test.key", work / "test.crt"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650"),
            *("-subj", "/CN=trustedlaunch fuzz seed", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    signed = work / "SetNull.signed.efi"
    sbsign = ["sbsign", "--key", str(key), "--cert", str(cert), "--output", str(signed)]
    subprocess.run([*sbsign, str(SMALL_EFI[0])], check=True, capture_output=True)
    _write("pe", "SetNull.sbsigned.efi", signed.read_bytes())


def siglist_and_varstore_seeds(work: Path) -> None:
    for name in ("OVMF_VARS.fd", "OVMF_VARS.ms.fd"):
        _write("varstore", name, (OVMF / name).read_bytes())
    json_store = work / "OVMF_VARS.ms.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "virt.firmware.vars",
            "-i",
            str(OVMF / "OVMF_VARS.ms.fd"),
            "--output-json",
            str(json_store),
        ],
        check=True,
        capture_output=True,
    )
    _write("varstore", "OVMF_VARS.ms.json", json_store.read_bytes())
    store = read_varstore(OVMF / "OVMF_VARS_4M.ms.fd")
    for name, raw in store.raw_databases.items():
        if raw:
            _write("siglist", f"ovmf-ms-{name}", raw)


def sbat_seeds() -> None:
    _write("sbat", "grub-sbat", b"\x00" + load_pe_image(GRUB).sections[".sbat"].rstrip(b"\x00"))
    _write("sbat", "level", b"\x01" + b"sbat,1,2024010900\nshim,4\ngrub,3\ngrub.debian,4\n")
    _write("sbat", "shim-sbatlevel", b"\x02" + load_pe_image(SHIM).sections[".sbatlevel"].rstrip(b"\x00"))


def evidence_and_policy_seeds(testdata: Path, work: Path) -> None:
    for name in ("ovmf_evlog.bin", "sb_evlog.bin"):
        raw = (testdata / "qemu-ovmf" / name).read_bytes()
        log = parse_event_log(raw)
        with Swtpm() as tpm:
            extend_event_log(tpm, log)
            pcrs = sorted({event.pcr for event in log.events if event.event_type != 3})
            evidence = collect_evidence(tpm, raw, nonce=b"\x0b\xad", pcrs=pcrs, workdir=work)
        _write("evidence", name.replace(".bin", ".json"), evidence.to_json().encode())
        _write(
            "policy", name.replace(".bin", ".json"), policy_from_summary(summarize(log)).to_json().encode()
        )
    rhel = parse_event_log((testdata / "go-tpm-tools/eventlogs/rhel8-uefi.bin").read_bytes())
    _write("policy", "rhel8-uefi.json", policy_from_summary(summarize(rhel)).to_json().encode())


def verifier_seeds(testdata: Path) -> None:
    """The log the verifier target's evidence quotes (its PCRs match), and another real OVMF log."""
    for name in ("sb_evlog.bin", "ovmf_evlog.bin"):
        _write("verifier", name, (testdata / "qemu-ovmf" / name).read_bytes())


def gce_seeds(testdata: Path) -> None:
    for path in sorted((testdata / "go-tpm-tools" / "attestations").glob("*.pb")):
        _write("gce", path.name, path.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--testdata", type=Path, default=REPO.parent / "shared" / "testdata")
    args = parser.parse_args()
    for folder in CORPUS_DIR.glob("*"):
        for seed in folder.glob("seed-*"):
            seed.unlink()
    with tempfile.TemporaryDirectory(prefix="tl-corpus-") as scratch:
        work = Path(scratch)
        eventlog_seeds(args.testdata)
        tpm_seeds(work)
        pe_seeds(work)
        siglist_and_varstore_seeds(work)
        sbat_seeds()
        evidence_and_policy_seeds(args.testdata, work)
        gce_seeds(args.testdata)
        verifier_seeds(args.testdata)
    total = sum(p.stat().st_size for p in CORPUS_DIR.rglob("*") if p.is_file())
    digest = hashlib.sha256(b"".join(sorted(p.name.encode() for p in CORPUS_DIR.rglob("seed-*"))))
    print(f"corpus: {total} bytes in {CORPUS_DIR} ({digest.hexdigest()[:12]})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
