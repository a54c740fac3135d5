"""quantfx's error taxonomy: catch by kind, read one message to know the fix.

Every message names the thing at fault (backend, module path, graph node or
observer), says what was expected, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "QuantfxError",
    "UnknownBackendError",
    "BackendUnavailableError",
    "PluginLoadError",
    "TracingError",
    "CaptureError",
    "ExampleInputsError",
    "CalibrationError",
    "UncalibratedObserverError",
    "ValidationError",
    "AnnotationConflictError",
    "LoweringError",
    "QuantfxWarning",
    "UnsupportedQConfigWarning",
]


class QuantfxError(Exception):
    """Base class of every error quantfx raises on purpose."""


class UnknownBackendError(QuantfxError, ValueError):
    """A backend name that no installed plugin provides."""


class BackendUnavailableError(QuantfxError, RuntimeError):
    """The backend is installed but cannot run here (no GPU, runtime missing, CPU lacks an ISA)."""


class PluginLoadError(QuantfxError, ImportError):
    """A backend plugin's entry point failed to import; other backends keep working."""


class TracingError(QuantfxError, RuntimeError):
    """symbolic tracing failed; the message names the module and source line."""


class CaptureError(QuantfxError, TypeError):
    """PT2E got a model not captured by ``torch.export`` (the message says how to capture it)."""


class ExampleInputsError(QuantfxError, ValueError):
    """example_inputs do not run the model."""


class CalibrationError(QuantfxError, ValueError):
    """Calibration statistics are unusable (NaN / Inf seen by an observer)."""


class UncalibratedObserverError(CalibrationError):
    """convert was called before an observer saw any data."""


class ValidationError(QuantfxError, ValueError):
    """A config or spec is inconsistent (quant_min > quant_max, bad dtype ...)."""


class AnnotationConflictError(QuantfxError, ValueError):
    """Two quantization specs were given for one edge of the graph (PT2E)."""


class LoweringError(QuantfxError, RuntimeError):
    """A backend could not lower the reference model."""


class QuantfxWarning(UserWarning):
    """Base class of quantfx's warnings."""


class UnsupportedQConfigWarning(QuantfxWarning):
    """A qconfig the backend does not support for a pattern was skipped; the node stays in float."""
