"""An older agent for the tests of nodes that run one: the current initramfs with the agent's KUBELETCERTS
handler removed (as nodes provisioned before kubelet credential renewal run), unpacked and packed again
with cpio as the kernel reads it (newc, gzip)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

# The line of the agent's request dispatch that an agent older than kubelet credential renewal lacks.
RENEWAL_HANDLER = '        KUBELETCERTS) renew_credentials "$3" ;;\n'


def older_agent_initramfs(initramfs: bytes) -> bytes:
    """`initramfs` (gzip newc) with an /init agent that does not know the KUBELETCERTS request."""
    tree = Path(tempfile.mkdtemp(prefix="tl-older-agent-"))
    try:
        subprocess.run(["cpio", "-id", "--quiet"], input=_gunzip(initramfs), cwd=tree, check=True)
        agent = (tree / "init").read_text()
        assert RENEWAL_HANDLER in agent, "the agent has no KUBELETCERTS handler to remove"
        (tree / "init").write_text(agent.replace(RENEWAL_HANDLER, ""))
        return subprocess.run(
            "find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -n",
            shell=True,
            cwd=tree,
            check=True,
            capture_output=True,
        ).stdout
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def _gunzip(data: bytes) -> bytes:
    return subprocess.run(["gzip", "-dc"], input=data, check=True, capture_output=True).stdout
