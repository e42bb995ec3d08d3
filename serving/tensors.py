"""numpy <-> ``tensorflow.TensorProto`` without going through TensorFlow ops.

Both ends of the model protocol use these: the model server decodes a PredictRequest's
inputs and encodes its outputs, the gateway does the opposite. Numeric arrays travel
as ``tensor_content`` (the raw little-endian bytes, one copy each way, what
``tf.make_tensor_proto`` also writes for numpy input); strings as ``string_val``.
Decoding also accepts the typed ``*_val`` fields other clients write (``float_val``,
``int64_val`` ..., with TensorFlow's rule that a shorter list is padded with its last
value, so a single value fills the tensor).

Example::

    proto = to_tensor_proto(np.array([[1, 2, 3]], np.int64))
    from_tensor_proto(proto)  # array([[1, 2, 3]])
    from_tensor_proto(to_tensor_proto(np.array(["F"], object)))  # array([b'F'], dtype=object)

Strings decode to ``object`` arrays of ``bytes`` (what ``tf.make_ndarray`` returns).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# numpy dtype -> (DataType, TensorProto field used when tensor_content is empty)
_NUMERIC: dict[np.dtype, tuple[int, str]] = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.float16): (types_pb2.DT_HALF, "half_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"),
    np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"),
    np.dtype(np.uint16): (types_pb2.DT_UINT16, "int_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"),
    np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
}
_BY_ENUM: dict[int, tuple[np.dtype, str]] = {enum: (dt, f) for dt, (enum, f) in _NUMERIC.items()}

#: DataType enum -> numpy-ish name used in messages ("float32", "int64", "string").
DTYPE_NAMES: dict[int, str] = {enum: str(dt) for dt, (enum, _) in _NUMERIC.items()}
DTYPE_NAMES[types_pb2.DT_STRING] = "string"


def dtype_name(enum: int) -> str:
    """A DataType enum as a short name (``DT_FLOAT`` -> ``float32``)."""
    return DTYPE_NAMES.get(enum) or types_pb2.DataType.Name(enum)


def _shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape])


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    raise TypeError(f"cannot encode {type(value).__name__} {value!r} in a string tensor")


def to_tensor_proto(array: Any) -> tensor_pb2.TensorProto:
    """A numpy array (or anything ``np.asarray`` takes) as a TensorProto.

    ``object`` arrays of ``str``/``bytes``, ``U`` and ``S`` arrays become DT_STRING
    (str is UTF-8 encoded); numeric arrays keep their dtype (float64 stays DT_DOUBLE:
    cast first if the signature wants float32).
    """
    arr = np.asarray(array)
    kind = arr.dtype.kind
    proto = tensor_pb2.TensorProto(tensor_shape=_shape_proto(arr.shape))
    if kind in "OUS":
        proto.dtype = types_pb2.DT_STRING
        values = arr.ravel().tolist()
        if kind == "S":
            proto.string_val.extend(values)
        elif kind == "U":
            proto.string_val.extend([v.encode("utf-8") for v in values])
        else:
            try:
                if values and type(values[0]) is str:
                    proto.string_val.extend([v.encode("utf-8") for v in values])
                else:
                    proto.string_val.extend(values)  # all bytes: no per-item Python work
            except (TypeError, AttributeError):  # mixed str / bytes / numpy scalars
                del proto.string_val[:]
                proto.string_val.extend([_to_bytes(v) for v in values])
        return proto
    key = arr.dtype.newbyteorder("=") if arr.dtype.byteorder not in "=|" else arr.dtype
    try:
        proto.dtype = _NUMERIC[np.dtype(key)][0]
    except KeyError:
        raise TypeError(f"unsupported dtype {arr.dtype} for a TensorProto") from None
    # TensorProto content is little-endian; '<' is a no-op copy on little-endian hosts.
    proto.tensor_content = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return proto


def tensor_shape(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    return tuple(d.size for d in proto.tensor_shape.dim)


#: Most elements one decoded tensor may have. A real request is far below it (500 candidates x 19 genres is
#: ~10k); the bound exists because TensorFlow's fill rule lets a 40-byte proto declare [1, 2**31] and ask for
#: 16 GiB - the declared size is checked before anything is allocated.
MAX_ELEMENTS = 4_000_000


def from_tensor_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto as a numpy array (strings: ``object`` array of ``bytes``).

    Numeric ``tensor_content`` is wrapped without a copy, so the array is read-only.
    Raises ValueError when the values do not fit the declared shape, TypeError on an
    unsupported dtype.
    """
    shape = tensor_shape(proto)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor shape {list(shape)} has an unknown dimension")
    size = 1
    for d in shape:  # exact integers: a product of huge dimensions must not wrap around in int64
        size *= int(d)
    if size > MAX_ELEMENTS:
        raise ValueError(f"tensor shape {list(shape)} declares {size} elements, more than the {MAX_ELEMENTS} allowed")
    if proto.dtype == types_pb2.DT_STRING:
        values = proto.string_val
        if len(values) == size:
            out = np.empty(size, dtype=object)
            out[:] = list(values)
            return out.reshape(shape)
        return _fill(list(values), size, shape, object, b"")
    try:
        dtype, field = _BY_ENUM[proto.dtype]
    except KeyError:
        raise TypeError(f"unsupported TensorProto dtype {types_pb2.DataType.Name(proto.dtype)}") from None
    if proto.tensor_content:
        le = dtype.newbyteorder("<")
        if len(proto.tensor_content) != size * dtype.itemsize:
            raise ValueError(f"tensor_content has {len(proto.tensor_content)} bytes, shape {list(shape)} of "
                             f"{dtype} needs {size * dtype.itemsize}")
        arr = np.frombuffer(proto.tensor_content, dtype=le).reshape(shape)
        return arr if le == dtype else arr.astype(dtype)
    values = getattr(proto, field)
    if proto.dtype == types_pb2.DT_HALF:  # half_val holds the raw 16-bit patterns
        raw = np.asarray(list(values), dtype=np.uint16).view(np.float16)
        return _fill(raw, size, shape, np.float16, 0)
    if len(values) == size:
        return np.asarray(values, dtype=dtype).reshape(shape)
    return _fill(list(values), size, shape, dtype, 0)


def _fill(values: Any, size: int, shape: tuple[int, ...], dtype: Any, zero: Any) -> np.ndarray:
    """TensorFlow's rule: fewer values than elements -> repeat the last (zeros when none)."""
    n = len(values)
    if n > size:
        raise ValueError(f"{n} values do not fit shape {list(shape)}")
    out = np.empty(size, dtype=dtype)
    out[:n] = values
    out[n:] = values[-1] if n else zero
    return out.reshape(shape)
