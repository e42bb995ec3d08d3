"""A signature of a loaded version: its TensorInfo specs, and request tensors decoded against them.

Errors carry the gRPC status code TF Serving answers (``ServingError``), with its
wording, so a client cannot tell this server from the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import grpc
import numpy as np

from serving.tensors import dtype_name, from_tensor_proto, tensor_shape

DEFAULT_SIGNATURE = "serving_default"


class ServingError(Exception):
    """A request error with the gRPC status code TF Serving would answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass
class Signature:
    """One signature of a loaded version: its function and TensorInfo specs (-1 = any size)."""

    name: str
    fn: Any
    inputs: dict[str, tuple[int, tuple[int, ...]]]   # alias -> (DataType, shape)
    outputs: dict[str, tuple[int, tuple[int, ...]]]
    tf_dtypes: dict[str, Any]
    # inputs / outputs whose 2nd dimension is variable (the candidate dimension N):
    # the batcher pads these inputs to a common N and slices these outputs back
    padded_inputs: tuple[str, ...] = ()
    padded_outputs: tuple[str, ...] = ()

    def decode(self, protos: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Request TensorProtos -> numpy, checked against the signature (INVALID_ARGUMENT naming the input)."""
        unknown = sorted(set(protos) - set(self.inputs))
        if unknown:
            raise invalid(f"input tensor alias not found in signature: {', '.join(unknown)}. "
                           f"Inputs expected to be in the set {{{','.join(sorted(self.inputs))}}}.")
        missing = sorted(set(self.inputs) - set(protos))
        if missing:
            raise invalid(f"input {', '.join(repr(m) for m in missing)} missing: signature {self.name!r} expects "
                           f"{{{','.join(sorted(self.inputs))}}}")
        out: dict[str, np.ndarray] = {}
        batch: tuple[str, int] | None = None
        for alias, proto in protos.items():
            dtype, shape = self.inputs[alias]
            if proto.dtype != dtype:
                raise invalid(f"input {alias!r} has dtype {dtype_name(proto.dtype)}, "
                               f"signature {self.name!r} expects {dtype_name(dtype)}")
            got = tensor_shape(proto)
            if len(got) != len(shape) or any(w != -1 and g != w for g, w in zip(got, shape)):
                raise invalid(f"input {alias!r} has shape {list(got)}, signature {self.name!r} expects "
                               f"{[None if d == -1 else d for d in shape]}")
            try:
                value = from_tensor_proto(proto)
            except (ValueError, TypeError) as exc:
                raise invalid(f"input {alias!r}: {exc}") from None
            if value.ndim:
                if batch is None:
                    batch = (alias, value.shape[0])
                elif value.shape[0] != batch[1]:
                    raise invalid(f"input {alias!r} has batch size {value.shape[0]} but {batch[0]!r} has "
                                   f"{batch[1]}: all inputs must have equal 0th-dimension size")
            out[alias] = value
        return out

    def output_names(self, output_filter: Sequence[str]) -> list[str]:
        if not output_filter:
            return list(self.outputs)
        names = list(dict.fromkeys(output_filter))
        for n in names:
            if n not in self.outputs:
                raise invalid(f"output tensor alias not found in signature: {n} Outputs expected to be in the "
                               f"set {{{','.join(sorted(self.outputs))}}}.")
        return names
