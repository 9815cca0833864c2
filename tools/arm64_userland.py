"""An aarch64 (ARM64) Linux userland on an x86-64 Linux machine, from the package registries only, to run
nsr-deploy's torch-free runtime on ARM64 under qemu-user emulation.

    python tools/arm64_userland.py            # build (or check) the cached userland, print where it is
    python tools/arm64_userland.py -- -c "import platform; print(platform.machine())"   # run its python

What it builds, under ``~/.cache/nsr-deploy/arm64/`` (``NSR_DEPLOY_ARM64_CACHE`` moves it):

* ``qemu/``: Debian 13's ``qemu-user`` (qemu 10.0, statically linked: it runs on any x86-64 Linux), fetched
  by ``apt-get download`` and unpacked with ``dpkg -x``; nothing is installed on the system. Debian 12's
  qemu 7.2 crashes loading ONNX Runtime 1.28 and newer (docs/notes/arm64-emulation.md);
* ``root/``: the arm64 Debian 12 packages of Python 3.11 and the C/C++ runtime libraries the wheels need,
  resolved and fetched by apt with a private state folder and sources list (the system's apt setup and
  dpkg architectures are not touched), unpacked with ``dpkg -x``;
* ``wheels/``: aarch64 wheels of what ``nsr_deploy.runtimes`` runs on (``pip install --platform ...
  --only-binary=:all: --target``). pip is given every ``manylinux_2_NN_aarch64`` tag up to the userland's
  glibc (2.36): with only the oldest tags it silently picks old releases (OpenVINO 2023.1).

Each step leaves a stamp naming what it installed, so a warm run checks three files and starts in seconds.
Versions verified: ``QEMU`` and ``WHEELS`` below. Emulated timings are not speed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEBIAN = "bookworm"  # the userland: Python 3.11, glibc 2.36
QEMU = ("trixie", "qemu-user", "usr/bin/qemu-aarch64")  # suite, package, binary: qemu 10.0
MIRRORS = ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PACKAGES = ("python3.11", "libgomp1", "libstdc++6")  # the interpreter, OpenMP (ncnn) and C++ runtimes
GLIBC_MINOR = 36  # Debian 12
# The emulated CPU: Arm Neoverse N1 (ARMv8.2-A: NEON, dot product, fp16; the core of AWS Graviton2 and Ampere
# Altra, a sibling of the phones' Cortex-A76). qemu's default, "max", adds SVE and SME, whose kernels ONNX
# Runtime picks and qemu emulates slowly (a 64 x 64 restore: 80 s, against 11 s on N1).
CPU = "neoverse-n1"
# the set verified together under emulation (docs/notes/arm64-emulation.md); pinned so a new release of one
# of them cannot change what "ARM64, verified" means without this file changing
WHEELS = ("onnxruntime==1.32.0", "openvino==2026.4.1", "ncnn==1.0.20261020", "onnx==1.23.2", "numpy==2.4.6",
          "pillow==13.0.0", "click==8.5.1", "tqdm==4.70.1", "jsonschema==4.26.0")
PYTHON = "usr/bin/python3.11"


def cache_dir() -> Path:
    return Path(os.environ.get("NSR_DEPLOY_ARM64_CACHE", Path.home() / ".cache" / "nsr-deploy" / "arm64"))


@dataclass(frozen=True)
class Userland:
    qemu: Path  # qemu-aarch64 (user mode, static)
    root: Path  # the arm64 root: its python and libraries
    wheels: Path  # aarch64 site-packages

    def command(self, *args: str) -> list[str]:
        """The argv that runs the aarch64 Python with ``args``."""
        return [str(self.qemu), "-L", str(self.root), str(self.root / PYTHON), *args]

    def env(self, *paths: Path, **extra: str) -> dict[str, str]:
        """An environment for that Python: the wheels, then ``paths`` (the repository), on PYTHONPATH."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PYTHONPATH"] = os.pathsep.join([str(self.wheels), *map(str, paths)])
        return {**env, "PYTHONDONTWRITEBYTECODE": "1", "QEMU_CPU": CPU, **extra}

    def run(self, *args: str, paths: tuple[Path, ...] = (), timeout: float = 1800, cwd=None,
            **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env(*paths, **extra), cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)


def unavailable() -> str | None:
    """None when this machine can build and run the userland, else why not (one line)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"needs x86-64 Linux, this is {sys.platform} {platform.machine()}"
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            return f"needs Debian's {tool} (apt-get download, dpkg -x)"
    if not Path(KEYRING).is_file():
        return f"needs Debian's archive keyring ({KEYRING})"
    return None


def _stamped(folder: Path, key: dict, build, say) -> None:
    """``build(tmp)`` into a fresh temporary folder renamed to ``folder``, unless its stamp says ``key``."""
    stamp = folder / ".built.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return
    say(f"arm64 userland: building {folder.name}/ ({', '.join(f'{k}={v}' for k, v in key.items())})")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(tmp)
        (tmp / ".built.json").write_text(json.dumps(key))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(cmd: list[str], what: str, **kw) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{what} failed: {tail[0][:300]}")


def _fetch_debs(arch: str, packages: tuple[str, ...], with_dependencies: bool, dest: Path,
                suite: str = DEBIAN) -> list[Path]:
    """Debian packages for ``arch`` into ``dest``, by apt with a private state folder and sources list
    (the system's apt lists, sources and dpkg architectures are neither needed nor touched)."""
    state = dest / "apt"
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (state / sub).mkdir(parents=True)
    suites = {MIRRORS[0]: suite, MIRRORS[1]: f"{suite}-security"}
    (state / "sources.list").write_text("".join(f"deb [arch={arch} signed-by={KEYRING}] {url} {suite} main\n"
                                                for url, suite in suites.items()))
    apt = ["apt-get", "-o", f"Dir::State={state}/state", "-o", f"Dir::Cache={state}/cache",
           "-o", f"Dir::Etc::SourceList={state}/sources.list", "-o", "Dir::Etc::SourceParts=/nonexistent",
           "-o", "Dir::State::status=/dev/null", "-o", f"APT::Architecture={arch}",
           "-o", f"APT::Architectures::={arch}", "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]
    _check([*apt, "update", "--error-on=any"], f"apt-get update ({arch} lists; no network to {MIRRORS[0]}?)")
    if with_dependencies:  # an empty dpkg status: the whole closure, libc included
        _check([*apt, "install", "--download-only", "-y", "--no-install-recommends", *packages],
               f"apt-get download of {', '.join(packages)} ({arch})")
        return sorted((state / "cache" / "archives").glob("*.deb"))
    _check([*apt, "download", *packages], f"apt-get download of {', '.join(packages)} ({arch})", cwd=dest)
    return sorted(dest.glob("*.deb"))


def _unpack(debs: list[Path], tmp: Path) -> None:
    for deb in debs:
        _check(["dpkg", "-x", str(deb), str(tmp)], f"dpkg -x {deb.name}")


def _build_qemu(tmp: Path) -> None:
    with tempfile.TemporaryDirectory() as dl:
        _unpack(_fetch_debs("amd64", (QEMU[1],), False, Path(dl), QEMU[0]), tmp)


def _build_root(tmp: Path) -> None:
    with tempfile.TemporaryDirectory() as dl:
        _unpack(_fetch_debs("arm64", PACKAGES, True, Path(dl)), tmp)


def _build_wheels(tmp: Path) -> None:
    tags = [f"--platform=manylinux_2_{n}_aarch64" for n in range(17, GLIBC_MINOR + 1)]
    tags += ["--platform=manylinux2014_aarch64", "--platform=linux_aarch64"]
    _check([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-warn-conflicts",
            "--only-binary=:all:", "--python-version=3.11", "--implementation=cp", *tags, "--target", str(tmp),
            *WHEELS], "pip install of the aarch64 wheels")


def ensure(say=print) -> Userland:
    """The cached userland, built first where a step is missing or out of date. Raises RuntimeError with
    one line when a step fails (no network, no apt)."""
    why = unavailable()
    if why:
        raise RuntimeError(why)
    root = cache_dir()
    _stamped(root / "qemu", {"package": QEMU[1], "debian": QEMU[0]}, _build_qemu, say)
    _stamped(root / "root", {"packages": list(PACKAGES), "debian": DEBIAN}, _build_root, say)
    _stamped(root / "wheels", {"wheels": list(WHEELS), "glibc": f"2.{GLIBC_MINOR}"}, _build_wheels, say)
    return Userland(root / "qemu" / QEMU[2], root / "root", root / "wheels")


def main(argv: list[str]) -> int:
    try:
        land = ensure()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "--" in argv:
        return subprocess.call(land.command(*argv[argv.index("--") + 1:]), env=land.env(Path.cwd()))
    print(f"qemu {land.qemu}\nroot {land.root}\nwheels {land.wheels}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
