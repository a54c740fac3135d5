"""Backend conformance kit: one subclass proves a backend lowers the reference IR faithfully.

A backend package (built-in or third party) adds::

    from quantfx.testing.conformance import BackendConformanceTests

    class TestFbgemmConformance(BackendConformanceTests):
        backend = "fbgemm"
        sqnr_bounds = {"transformer_block": 25.0}       # per case id, or "model" / "op"
        xfail = {"Conv3d+ReLU": "no int8 conv3d kernel yet"}

and pytest runs, for every model of ``MODEL_SUITE`` and every pattern of the
backend's ``BackendConfig`` (``op_cases``):

    prepare_fx(model, get_default_qconfig_mapping(backend), example_inputs, backend=backend)
    -> calibrate -> convert_to_reference_fx -> lower(reference, backend, example_inputs)

and checks

- ``test_model_sqnr`` / ``test_op_sqnr``: SQNR(reference output, backend output) >= bound
  (default 30 dB per model, 35 dB per op);
- ``test_reference_close_to_float``: the reference model itself is a sane
  quantization of the float model (loose bound, catches broken qparams);
- ``test_lowering_does_not_mutate_reference``: lowering leaves the reference
  model's graph, weights and outputs untouched;
- ``test_save_load_roundtrip``: a saved and reloaded artifact gives bit-exact
  outputs (skipped when the backend does not implement save / load);
- ``test_pt2e_matches_fx``: the model through ``torch.export`` -> ``prepare_pt2e``
  with the backend's Quantizer -> ``convert_pt2e`` -> lower agrees with the FX
  flow's lowered output, SQNR >= 30 dB (see ``quantfx.pt2e.conformance``;
  skipped when the backend has no ``get_quantizer``).

Every stage is a method (``prepare``, ``convert_reference``, ``lower``,
``run_artifact``, ``save_artifact``, ``load_artifact``) a subclass may override.
Results are cached per (class, case), so the stages run once per case even though
several tests look at them.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from quantfx.pt2e.conformance import Pt2eConformanceMixin
from quantfx.testing.cases import OpCase, op_cases
from quantfx.testing.metrics import flatten_outputs, sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data

__all__ = ["BackendConformanceTests", "Flow"]

_OP_CASES: dict[tuple[type, str], list[OpCase] | BaseException] = {}
_FLOWS: dict[tuple[type, str, str], "Flow"] = {}


@dataclass
class Flow:
    """Everything computed for one case: float model, reference model, lowered artifact, outputs."""

    name: str
    float_model: torch.nn.Module
    example_inputs: tuple[Any, ...]
    eval_inputs: list[tuple[Any, ...]]
    float_out: list[Any] = field(default_factory=list)
    reference: Any = None
    reference_out: list[Any] = field(default_factory=list)
    reference_error: BaseException | None = None
    artifact: Any = None
    artifact_out: list[Any] = field(default_factory=list)
    lowering_error: BaseException | None = None
    reference_code_before: str = ""
    reference_state_before: dict[str, torch.Tensor] = field(default_factory=dict)
    reference_out_after_lowering: list[Any] = field(default_factory=list)


def _as_reason_map(x: Any) -> dict[str, str]:
    if not x:
        return {}
    if isinstance(x, Mapping):
        return {str(k): str(v) for k, v in x.items()}
    return {str(k): "listed in the conformance class" for k in x}


def _snapshot_state(model: Any) -> dict[str, torch.Tensor]:
    if not isinstance(model, torch.nn.Module):
        return {}
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}


def _clone_outputs(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone_outputs(o) for o in out)
    if isinstance(out, dict):
        return {k: _clone_outputs(v) for k, v in out.items()}
    return copy.deepcopy(out)


class BackendConformanceTests(Pt2eConformanceMixin):
    """Template test class: subclass it (name it ``Test...``) and set ``backend``.

    Class attributes a backend sets:

    - ``backend``: the backend name, as ``quantfx.api`` resolves it.
    - ``sqnr_bounds``: dB lower bounds of SQNR(reference, backend) keyed by case id
      (``"conv_bn_relu"``, ``"Conv2d+ReLU"``) or by kind (``"model"``, ``"op"``);
      anything missing uses ``default_model_sqnr`` (30) / ``default_op_sqnr`` (35).
    - ``float_sqnr_bounds``: same keys, bounds of SQNR(float, reference) for
      ``test_reference_close_to_float`` (``default_float_sqnr`` = 20 dB: a sanity floor;
      torch.ao's fbgemm defaults reach 29-46 dB on the suite).
    - ``static_only``: skip op cases the backend only quantizes dynamically / weight-only
      (with False they run under ``qconfig_mapping()``: override it to quantize them).
    - ``xfail`` / ``skip``: ``{case id or "test_name[case id]": reason}``.
    - ``models`` / ``ops``: restrict to these case ids (None: all).
    - ``save_load_models`` / ``mutation_models``: models those (costlier) checks run on.
    - ``calibration_batches``: batches fed to the prepared model after ``example_inputs``.
    - ``num_threads``: torch intra-op threads while a case runs (restored after). The
      cases are tiny; on a busy CI machine extra threads make a small conv ~100x
      slower. ``None`` keeps torch's setting (for backends that need threads).
    """

    backend: ClassVar[str] = ""
    sqnr_bounds: ClassVar[dict[str, float]] = {}
    default_model_sqnr: ClassVar[float] = 30.0
    default_op_sqnr: ClassVar[float] = 35.0
    float_sqnr_bounds: ClassVar[dict[str, float]] = {}
    default_float_sqnr: ClassVar[float] = 20.0
    static_only: ClassVar[bool] = True
    xfail: ClassVar[Mapping[str, str] | set[str]] = {}
    skip: ClassVar[Mapping[str, str] | set[str]] = {}
    models: ClassVar[tuple[str, ...] | None] = None
    ops: ClassVar[tuple[str, ...] | None] = None
    save_load_models: ClassVar[tuple[str, ...]] = ("conv_bn_relu", "linear_relu_mlp", "transformer_block")
    mutation_models: ClassVar[tuple[str, ...] | None] = None
    calibration_batches: ClassVar[int] = 8
    num_threads: ClassVar[int | None] = 1

    # ------------------------------------------------------------------ parametrization

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """Parametrize ``model_name`` / ``op_case_name`` from the class attributes."""
        import pytest

        test = metafunc.function.__name__
        if "model_name" in metafunc.fixturenames:
            if test == "test_save_load_roundtrip":
                names = [n for n in self.save_load_models if n in self._model_names()]
            elif test == "test_lowering_does_not_mutate_reference" and self.mutation_models is not None:
                names = [n for n in self.mutation_models if n in self._model_names()]
            else:
                names = self._model_names()
            metafunc.parametrize("model_name", [self._param(pytest, test, n) for n in names])
        if "op_case_name" in metafunc.fixturenames:
            cases = self._op_cases()
            if isinstance(cases, BaseException):
                params = [pytest.param("<backend config unavailable>", id="backend-config-unavailable")]
            else:
                params = [self._param(pytest, test, c.name, c) for c in cases]
            metafunc.parametrize("op_case_name", params)

    def _param(self, pytest: Any, test: str, case_id: str, case: OpCase | None = None) -> Any:
        marks = []
        skip, xfail = _as_reason_map(self.skip), _as_reason_map(self.xfail)
        for key in (f"{test}[{case_id}]", case_id):
            if key in skip:
                marks.append(pytest.mark.skip(reason=skip[key]))
                break
            if key in xfail:
                marks.append(pytest.mark.xfail(reason=xfail[key], strict=False))
                break
        if case is not None and case.skipped:
            marks.append(pytest.mark.skip(reason=f"op case not built: {case.skip_reason}"))
        elif case is not None and self.static_only and case.quant_mode != "static":
            marks.append(pytest.mark.skip(reason=f"static_only: {self.backend} quantizes this pattern {case.quant_mode} only"))
        return pytest.param(case_id, id=case_id, marks=marks)

    def _model_names(self) -> list[str]:
        if self.models is None:
            return list(MODEL_SUITE)
        unknown = [m for m in self.models if m not in MODEL_SUITE]
        if unknown:
            raise ValueError(f"{type(self).__name__}.models names unknown models {unknown}; known: {list(MODEL_SUITE)}")
        return list(self.models)

    def _op_cases(self) -> list[OpCase] | BaseException:
        key = (type(self), self.backend)
        if key not in _OP_CASES:
            try:
                cases = op_cases(self.backend_config(), include_skipped=True)
                if self.ops is not None:
                    unknown = sorted(set(self.ops) - {c.name for c in cases})
                    if unknown:
                        raise ValueError(f"{type(self).__name__}.ops names cases the backend config does not have: {unknown}")
                    cases = [c for c in cases if c.name in set(self.ops)]
                _OP_CASES[key] = cases
            except Exception as err:  # noqa: BLE001 - reported by the test that needs it
                _OP_CASES[key] = err
        return _OP_CASES[key]

    # ------------------------------------------------------------------ stages (overridable)

    def _require_backend(self) -> None:
        if not self.backend:
            raise AssertionError(f"{type(self).__name__} must set the class attribute backend = '<name>'")

    def backend_config(self) -> Any:
        """The backend's BackendConfig, whose patterns become op cases."""
        self._require_backend()
        return importlib.import_module("quantfx.api").get_backend_config(self.backend)

    def qconfig_mapping(self) -> Any:
        """The QConfigMapping used to prepare every case: the backend's default."""
        return importlib.import_module("quantfx.api").get_default_qconfig_mapping(self.backend)

    def prepare(self, model: torch.nn.Module, example_inputs: tuple[Any, ...]) -> Any:
        """Insert observers (``prepare_fx``)."""
        prepare_fx = importlib.import_module("quantfx.quantize_fx").prepare_fx
        return prepare_fx(model, self.qconfig_mapping(), example_inputs, backend=self.backend)

    def convert_reference(self, prepared: Any) -> Any:
        """Calibrated model -> reference quantized model (``convert_to_reference_fx``)."""
        return importlib.import_module("quantfx.quantize_fx").convert_to_reference_fx(prepared)

    def lower(self, reference: Any, example_inputs: tuple[Any, ...]) -> Any:
        """Reference model -> the backend's artifact (``quantfx.api.lower``)."""
        return importlib.import_module("quantfx.api").lower(reference, self.backend, example_inputs)

    def run_artifact(self, artifact: Any, inputs: tuple[Any, ...]) -> Any:
        """Run the backend's artifact on one batch of positional inputs."""
        with torch.no_grad():
            return artifact(*inputs)

    def backend_object(self) -> Any:
        """The registered ``quantfx.plugins.backend.Backend`` (``quantfx.api.get_backend``)."""
        return importlib.import_module("quantfx.api").get_backend(self.backend)

    def save_artifact(self, artifact: Any, path: str) -> None:
        """Save with ``Backend.save``; ``pytest.skip`` when the backend has no artifact format."""
        import pytest

        try:
            self.backend_object().save(artifact, path)
        except NotImplementedError as err:
            pytest.skip(f"backend {self.backend!r} does not implement save / load: {err}")

    def load_artifact(self, path: str) -> Any:
        """Load with ``Backend.load`` what ``save_artifact`` wrote."""
        return self.backend_object().load(path)

    # ------------------------------------------------------------------ the flow

    def _case_inputs(self, kind: str, name: str) -> tuple[torch.nn.Module, tuple[Any, ...]]:
        if kind == "model":
            return MODEL_SUITE[name]()
        cases = self._op_cases()
        if isinstance(cases, BaseException):
            raise AssertionError(f"could not build {self.backend!r}'s op cases: {type(cases).__name__}: {cases}") from cases
        case = next(c for c in cases if c.name == name)
        assert case.model is not None, case.skip_reason
        return case.model, case.example_inputs

    def flow(self, kind: str, name: str) -> Flow:
        """Run (once per class and case) prepare -> calibrate -> reference -> lower, and outputs."""
        self._require_backend()
        key = (type(self), kind, name)
        if key in _FLOWS:
            return _FLOWS[key]
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            _FLOWS[key] = self._run_flow(kind, name)
        finally:
            torch.set_num_threads(threads)
        return _FLOWS[key]

    def _run_flow(self, kind: str, name: str) -> Flow:
        model, example_inputs = self._case_inputs(kind, name)
        eval_inputs = [example_inputs, *calibration_data(example_inputs, n=1, seed=10_000)]
        f = Flow(name, model, example_inputs, eval_inputs)
        with torch.no_grad():
            f.float_out = [_clone_outputs(model(*x)) for x in eval_inputs]
        try:
            prepared = self.prepare(copy.deepcopy(model), example_inputs)
            with torch.no_grad():
                prepared(*example_inputs)
                for batch in calibration_data(example_inputs, n=self.calibration_batches, seed=0):
                    prepared(*batch)
            f.reference = self.convert_reference(prepared)
            with torch.no_grad():
                f.reference_out = [_clone_outputs(f.reference(*x)) for x in eval_inputs]
        except Exception as err:  # noqa: BLE001 - re-raised in each test that needs it
            f.reference_error = err
            return f
        f.reference_code_before = getattr(f.reference, "code", "")
        f.reference_state_before = _snapshot_state(f.reference)
        try:
            f.artifact = self.lower(f.reference, example_inputs)
            f.artifact_out = [_clone_outputs(self.run_artifact(f.artifact, x)) for x in eval_inputs]
        except Exception as err:  # noqa: BLE001
            f.lowering_error = err
        with torch.no_grad():
            f.reference_out_after_lowering = [_clone_outputs(f.reference(*x)) for x in eval_inputs]
        return f

    def _reference_flow(self, kind: str, name: str) -> Flow:
        f = self.flow(kind, name)
        if f.reference_error is not None:
            raise AssertionError(
                f"[{self.backend}] {kind} {name!r}: prepare / calibrate / convert_to_reference_fx failed: "
                f"{type(f.reference_error).__name__}: {f.reference_error}"
            ) from f.reference_error
        return f

    def _lowered_flow(self, kind: str, name: str) -> Flow:
        f = self._reference_flow(kind, name)
        if f.lowering_error is not None:
            raise AssertionError(
                f"[{self.backend}] {kind} {name!r}: lowering or running the artifact failed: "
                f"{type(f.lowering_error).__name__}: {f.lowering_error}"
            ) from f.lowering_error
        return f

    def bound(self, kind: str, name: str, table: Mapping[str, float] | None = None) -> float:
        """The SQNR bound for a case: by case id, then by kind, then the class default."""
        if table is None:
            table = self.sqnr_bounds
            default = self.default_model_sqnr if kind == "model" else self.default_op_sqnr
        else:
            default = self.default_float_sqnr
        for key in (name, kind):
            if key in table:
                return float(table[key])
        return float(default)

    def _check_sqnr(self, kind: str, name: str) -> None:
        f = self._lowered_flow(kind, name)
        value = sqnr(f.reference_out, f.artifact_out)
        bound = self.bound(kind, name)
        assert value >= bound, (
            f"[{self.backend}] {kind} {name!r}: SQNR(reference, backend) = {value:.1f} dB < {bound:.1f} dB. "
            f"The lowered model disagrees with the reference quantized model; raise the bound only if the "
            f"backend's kernels are known to round differently (sqnr_bounds = {{{name!r}: ...}})."
        )

    # ------------------------------------------------------------------ tests

    def test_model_sqnr(self, model_name: str) -> None:
        """Lowered model agrees with the reference quantized model (whole models)."""
        self._check_sqnr("model", model_name)

    def test_op_sqnr(self, op_case_name: str) -> None:
        """Lowered model agrees with the reference quantized model (one pattern each)."""
        self._check_sqnr("op", op_case_name)

    def test_reference_close_to_float(self, model_name: str) -> None:
        """The reference model is a sane int8 simulation of the float model."""
        f = self._reference_flow("model", model_name)
        value = sqnr(f.float_out, f.reference_out)
        bound = self.bound("model", model_name, self.float_sqnr_bounds)
        assert value >= bound, (
            f"[{self.backend}] model {model_name!r}: SQNR(float, reference) = {value:.1f} dB < {bound:.1f} dB: "
            "the default qconfig / calibration produce a poor quantization."
        )

    def test_lowering_does_not_mutate_reference(self, model_name: str) -> None:
        """Lowering must leave the reference model's graph, weights and outputs as they were."""
        f = self._lowered_flow("model", model_name)
        assert getattr(f.reference, "code", "") == f.reference_code_before, (
            f"[{self.backend}] lowering {model_name!r} rewrote the reference model's graph in place; "
            "deep-copy it before lowering."
        )
        after = _snapshot_state(f.reference)
        assert after.keys() == f.reference_state_before.keys(), (
            f"[{self.backend}] lowering {model_name!r} added / removed parameters or buffers of the reference model: "
            f"{sorted(set(after) ^ set(f.reference_state_before))}"
        )
        for k, v in after.items():
            assert torch.equal(v, f.reference_state_before[k]), (
                f"[{self.backend}] lowering {model_name!r} changed the reference model's {k!r} in place."
            )
        for before, now in zip(f.reference_out, f.reference_out_after_lowering):
            assert torch.equal(flatten_outputs(before), flatten_outputs(now)), (
                f"[{self.backend}] the reference model {model_name!r} computes different outputs after lowering."
            )

    def test_save_load_roundtrip(self, model_name: str, tmp_path: Any) -> None:
        """A saved and reloaded artifact computes bit-exactly what the in-memory one does."""
        f = self._lowered_flow("model", model_name)
        path = str(tmp_path / f"{model_name}.quantfx")
        self.save_artifact(f.artifact, path)
        loaded = self.load_artifact(path)
        for x, expected in zip(f.eval_inputs, f.artifact_out):
            got = flatten_outputs(self.run_artifact(loaded, x))
            want = flatten_outputs(expected)
            assert got.shape == want.shape and torch.equal(got, want), (
                f"[{self.backend}] {model_name!r}: the reloaded artifact's outputs differ from the original's "
                f"(max abs diff {(got - want).abs().max().item() if got.shape == want.shape else 'shape mismatch'})."
            )
