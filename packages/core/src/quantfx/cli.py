"""The ``quantfx`` command line: see which backends work here, quantize from a shell.

    quantfx backends
    quantfx quantize --model torchvision.models:resnet18 --backend fbgemm \\
        --example-shape 1,3,224,224 --calibration random:8 --output resnet18.int8
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, TextIO

import torch

from quantfx.errors import QuantfxError, ValidationError

__all__ = ["main", "build_parser"]


def _table_plain(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line.rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    # rich boxes for people at a terminal; plain columns for pipes, logs and grep
    if not (hasattr(out, "isatty") and out.isatty()):
        _table_plain(headers, rows, out)
        return
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        _table_plain(headers, rows, out)
        return
    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    Console(file=out, soft_wrap=True).print(table)


_INLINE_DETAIL_CHARS = 40  # longer availability details (advice sentences) go under "Notes:"


def _cmd_backends(args: argparse.Namespace, out: TextIO) -> int:
    from quantfx import api
    from quantfx.plugins import load_errors

    infos = api.backends()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2, default=str), file=out)
        return 0
    headers = ("name", "available", "distribution", "version", "details")
    rows = [
        (
            i.name,
            "yes" if i.available else ("load error" if i.load_error else "no"),
            i.distribution or "",
            i.version or "",
            ", ".join(f"{k}={v}" for k, v in i.details.items() if len(str(v)) <= _INLINE_DETAIL_CHARS),
        )
        for i in infos
    ]
    _print_table(headers, rows, out)
    notes = [(i.name, k, str(v)) for i in infos for k, v in i.details.items() if len(str(v)) > _INLINE_DETAIL_CHARS]
    if notes:
        print("\nNotes:", file=out)
        for name, key, text in notes:
            print(textwrap.fill(text, width=100, initial_indent=f"  {name} {key}: ", subsequent_indent="    "), file=out)
    unavailable = [i for i in infos if not i.available and not i.load_error]
    if unavailable:
        print("\nWhy unavailable:", file=out)
        for i in unavailable:
            print(textwrap.fill(i.reason or "", width=100, initial_indent=f"  {i.name}: ", subsequent_indent="    "), file=out)
    errors = load_errors()
    if errors:
        print("\nPlugin load errors:", file=out)
        for failure in errors:
            print(f"  {failure.message}", file=out)
    return 0


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not a comma list of integers, e.g. 1,3,224,224") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"shape {text!r} needs positive sizes, e.g. 1,3,224,224")
    return shape


def _import_object(spec: str, what: str) -> Any:
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValidationError(f"{what} {spec!r} must look like 'package.module:name'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a model file in the current directory, as `python -m` would
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError(f"{what} {spec!r}: cannot import {module_name!r}: {exc}") from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ValidationError(f"{what} {spec!r}: {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def _load_model(spec: str) -> torch.nn.Module:
    obj = _import_object(spec, "--model")
    model = obj if isinstance(obj, torch.nn.Module) else obj() if callable(obj) else obj
    if not isinstance(model, torch.nn.Module):
        raise ValidationError(
            f"--model {spec!r} gave {type(model).__name__}; it must be an nn.Module or a "
            f"function returning one (called with no arguments)"
        )
    return model


def _calibration_data(spec: str, shapes: Sequence[tuple[int, ...]]) -> Any:
    kind, _, rest = spec.partition(":")
    if kind == "random":
        try:
            count = int(rest)
        except ValueError:
            count = 0
        if count <= 0:
            raise ValidationError(f"--calibration {spec!r}: expected random:N with N > 0 batches")
        return [tuple(torch.randn(s) for s in shapes) for _ in range(count)]
    data = _import_object(spec, "--calibration")
    return data() if callable(data) else data


def _cmd_quantize(args: argparse.Namespace, out: TextIO) -> int:
    from quantfx import api

    if args.calibration is None:
        raise ValidationError(
            "quantize needs calibration data: --calibration package.module:loader (an iterable "
            "of model inputs, or a function returning one), or --calibration random:N for a smoke "
            "test on random inputs (scales from random data give poor accuracy)"
        )
    backend_name = args.backend or api.default_backend()
    backend = api.get_backend(backend_name)  # fail on a wrong name before importing the model
    model = _load_model(args.model).eval()
    shapes = args.example_shape
    example_inputs = tuple(torch.randn(s) for s in shapes)
    calibration = _calibration_data(args.calibration, shapes)
    lowered = api.quantize(
        model,
        backend_name,
        calibration_data=calibration,
        example_inputs=example_inputs,
        progress=not args.no_progress,
    )
    print(f"Quantized {args.model} for backend '{backend_name}': {type(lowered).__name__}", file=out)
    if args.output:
        backend.save(lowered, args.output)
        print(f"Saved to {args.output}", file=out)
    else:
        print("Not saved (pass --output PATH to write the backend's artifact)", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``quantfx`` (exposed for docs and shell completion)."""
    parser = argparse.ArgumentParser(prog="quantfx", description="Quantize PyTorch models for a backend.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_backends = sub.add_parser("backends", help="list installed backends and whether they run here")
    p_backends.add_argument("--json", action="store_true", help="machine-readable output")
    p_backends.set_defaults(func=_cmd_backends)

    p_quant = sub.add_parser("quantize", help="post-training quantize a model and save the artifact")
    p_quant.add_argument("--model", required=True, help="package.module:factory returning an nn.Module")
    p_quant.add_argument("--backend", help="backend name (default: the best one installed for this CPU)")
    p_quant.add_argument(
        "--example-shape",
        required=True,
        action="append",
        type=_parse_shape,
        help="shape of one model input, e.g. 1,3,224,224; repeat for several inputs",
    )
    p_quant.add_argument(
        "--calibration",
        help="random:N (N random batches, smoke tests only) or package.module:loader",
    )
    p_quant.add_argument("--output", help="where the backend saves the quantized model")
    p_quant.add_argument("--no-progress", action="store_true", help="hide the calibration progress bar")
    p_quant.set_defaults(func=_cmd_quantize)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quantfx`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, sys.stdout))
    except (QuantfxError, NotImplementedError) as exc:
        print(f"quantfx: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
