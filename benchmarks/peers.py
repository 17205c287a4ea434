"""Peers that cannot share our virtualenv, each installed once into its own (``.bench-venv-NAME``).

infinity-emb pins older transformers/sentence-transformers; sentence-transformers' ``onnx`` extra
(optimum-onnx) needs transformers < 4.58 while our sentence-transformers needs >= 5; its
``openvino`` extra pulls a newer torch. A peer that cannot be installed is skipped with a note.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Peer:
    """A peer's virtualenv: what to install into it and which packages to remove after."""

    name: str
    requirements: tuple[str, ...]
    # PyPI's torchvision is built against CUDA torch and fails to import on the CPU torch (transformers
    # then fails too); optimum-intel lists it, but exporting a text model never uses it.
    remove: tuple[str, ...] = ()

    def venv(self, root: Path) -> Path:
        return root / f".bench-venv-{self.name}"


PEERS = {
    "infinity": Peer("infinity", ("infinity-emb[torch,server]",)),
    # Bounds that pip would otherwise find by backtracking for many minutes (optimum-onnx caps transformers).
    "onnx": Peer("onnx", ("sentence-transformers[onnx]>=5.7,<6", "transformers>=4.57,<4.58")),
    "openvino": Peer("openvino", ("sentence-transformers[openvino]",), remove=("torchvision",)),
}


def ensure_peer(peer: Peer, root: Path) -> str | None:
    """Create the peer's virtualenv once; returns None when ready, else why it was skipped."""
    venv = peer.venv(root)
    ready = venv / ".bench-ready"
    if ready.exists() or (peer.name == "infinity" and (venv / "bin" / "infinity_emb").exists()):
        return None
    print(f"  installing {' '.join(peer.requirements)} into {venv} (once) ...", file=sys.stderr)
    # torch first, and pinned for every later step: a plain ``torch`` requirement pulls a multi-GB CUDA
    # build, and a peer's extras would otherwise upgrade it to one.
    torch_spec = os.environ.get("TORCH_SPEC", "torch==2.13.0")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pin:
        pin.write(torch_spec + "\n")
    pip = [str(venv / "bin" / "pip"), "install", "-q", "-c", pin.name]
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [*pip, torch_spec],
        [*pip, *peer.requirements],
    ]
    if peer.remove:
        steps.append([str(venv / "bin" / "pip"), "uninstall", "-y", "-q", *peer.remove])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            return f"{peer.name} skipped: `{' '.join(step[-2:])}` failed ({' '.join(tail)[:200]})"
    ready.touch()
    return None
