"""One loaded version: the SavedModel, its MetaGraphDef signatures, how to call them, and warm-up."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import grpc
import numpy as np

from serving.model_server.signature import DEFAULT_SIGNATURE, ServingError, Signature, invalid

log = logging.getLogger(__name__)

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


class Servable:
    """One loaded version: the SavedModel, its MetaGraphDef signatures, and how to call them."""

    def __init__(self, version: int, path: Path, loaded: Any, signature_defs: Any) -> None:
        import tensorflow as tf

        self.version, self.path, self.loaded = version, path, loaded
        self.signature_defs = signature_defs  # MetaGraphDef.signature_def (for GetModelMetadata)
        self.signatures: dict[str, Signature] = {}
        for name, fn in loaded.signatures.items():
            sd = signature_defs.get(name) if hasattr(signature_defs, "get") else signature_defs[name]
            if sd is None:
                continue

            def specs(infos: Any) -> dict[str, tuple[int, tuple[int, ...]]]:
                return {k: (v.dtype, tuple(-1 if v.tensor_shape.unknown_rank else d.size for d in v.tensor_shape.dim))
                        for k, v in infos.items()}

            inputs, outputs = specs(sd.inputs), specs(sd.outputs)
            self.signatures[name] = Signature(
                name=name, fn=fn, inputs=inputs, outputs=outputs,
                tf_dtypes={k: tf.dtypes.as_dtype(d) for k, (d, _) in inputs.items()},
                padded_inputs=tuple(k for k, (_, s) in inputs.items() if len(s) >= 2 and s[1] == -1),
                padded_outputs=tuple(k for k, (_, s) in outputs.items() if len(s) >= 2 and s[1] == -1))

    @classmethod
    def load(cls, version: int, path: Path) -> "Servable":
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        sm = saved_model_pb2.SavedModel()
        sm.ParseFromString((path / "saved_model.pb").read_bytes())
        metas = [m for m in sm.meta_graphs if "serve" in m.meta_info_def.tags] or list(sm.meta_graphs)
        if not metas:
            raise ValueError(f"{path}: saved_model.pb holds no MetaGraphDef")
        loaded = tf.saved_model.load(str(path), tags=["serve"])
        return cls(version, path, loaded, metas[0].signature_def)

    def signature(self, name: str) -> Signature:
        sig = self.signatures.get(name or DEFAULT_SIGNATURE)
        if sig is None:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature key \"{name or DEFAULT_SIGNATURE}\" not found.")
        return sig

    def run(self, sig: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the signature on numpy inputs; TF errors become INVALID_ARGUMENT / INTERNAL."""
        import tensorflow as tf

        try:
            feed = {k: tf.constant(v, dtype=sig.tf_dtypes[k]) for k, v in inputs.items()}
            out = sig.fn(**feed)
            return {k: v.numpy() for k, v in out.items()}
        except tf.errors.InvalidArgumentError as exc:
            raise invalid(f"model {self.version}: {exc.message}") from None
        except tf.errors.OpError as exc:
            raise ServingError(grpc.StatusCode.INTERNAL, f"model {self.version}: {exc.message}") from None

    def warm_up(self, model_name: str) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests`` (PredictLog records); returns how many ran."""
        path = self.path / WARMUP_FILE
        if not path.exists():
            return 0
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        n = 0
        for raw in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
            record = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
            if record.WhichOneof("log_type") != "predict_log":
                log.warning("version %d: warm-up record of type %s skipped (only predict_log is served)",
                            self.version, record.WhichOneof("log_type"))
                continue
            req = record.predict_log.request
            sig = self.signature(req.model_spec.signature_name)
            self.run(sig, sig.decode(req.inputs))
            n += 1
        return n
