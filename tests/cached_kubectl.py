"""The kubectl of the cached Kubernetes release, as the control-plane tests run it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from trustedlaunch.control.kubernetes_release import KubernetesRelease


def kubectl(
    release: KubernetesRelease, kubeconfig: Path, *arguments: str, check: bool = True, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The cached kubectl with `kubeconfig` (its discovery cache beside it, not in $HOME)."""
    return subprocess.run(
        [
            str(release.binary("kubectl")),
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={kubeconfig.parent / 'kube-cache'}",
            "--request-timeout=20s",
            *arguments,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )
