"""The swtpm context manager against the real swtpm binary."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from trustedlaunch.tpm.swtpm import HOST, Swtpm, SwtpmError


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_two_instances_run_side_by_side_and_stop_cleanly() -> None:
    with Swtpm() as first, Swtpm() as second:
        assert first.port != second.port
        assert first.tcti == f"swtpm:host=127.0.0.1,port={first.port}"
        for tpm in (first, second):
            out = tpm.run(["tpm2_getrandom", "--hex", "8"]).stdout
            assert len(bytes.fromhex(out.decode())) == 8
        state_dir = first.state_dir
        ports = (first.port, second.port)
    assert not any(_reachable(port) or _reachable(port + 1) for port in ports)
    assert not state_dir.exists()  # the temporary state directory is removed


def test_state_dir_is_kept_and_the_ek_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "vtpm"
    eks = []
    for _ in range(2):
        with Swtpm(state) as tpm:
            tpm.run(["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"], cwd=tmp_path)
            tpm.flush_transient_objects()
            eks.append((tmp_path / "ek.pub").read_bytes())
    assert eks[0] == eks[1]  # same endorsement seed: same EK
    assert (state / "tpm2-00.permall").is_file()


def test_failing_tool_reports_its_stderr() -> None:
    with Swtpm() as tpm, pytest.raises(SwtpmError, match=r"tpm2_readpublic.*exit status"):
        tpm.run(["tpm2_readpublic", "-c", "0x81ffffff"])


def test_tcti_requires_a_running_instance() -> None:
    with pytest.raises(SwtpmError, match="not running"):
        _ = Swtpm().tcti


def test_a_state_directory_in_use_is_refused_with_swtpms_reason(tmp_path: Path) -> None:
    with Swtpm(tmp_path, startup_timeout=2) as first:
        with pytest.raises(SwtpmError, match=r"failed to start .*lock"):
            Swtpm(tmp_path, startup_timeout=2).__enter__()
        first.run(["tpm2_getrandom", "4"])  # the first instance is unaffected


def test_unusable_state_directory_is_an_operator_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SwtpmError, match="cannot use state directory"), Swtpm(blocker / "state"):
        pass
