"""A TensorFlow-Serving-protocol model server for one machine.

The TensorFlow Serving binary cannot be installed everywhere (not in this project's
environment, for one), so this module serves the same SavedModel directory over the
same gRPC API, and the gateway cannot tell the difference: pointing the gateway at a
real ``tensorflow_model_server`` is a configuration change (``deploy/tfserving/``).

What it implements, with TF Serving's semantics and status codes:

* ``tensorflow.serving.PredictionService``: ``Predict`` (model name, version or version
  label, signature, output_filter) and ``GetModelMetadata`` (``signature_def``);
* ``tensorflow.serving.ModelService``: ``GetModelStatus`` (START/LOADING/AVAILABLE/
  UNLOADING/END per version);
* the file-system poller: every ``poll_seconds`` the base path is scanned for integer
  version directories (dot-names and directories without ``saved_model.pb`` are
  ignored), new ones are loaded and warmed up with ``assets.extra/
  tf_serving_warmup_requests`` while the old version keeps serving, then switched in
  by one reference swap; versions beyond the newest ``keep_versions`` (TF Serving's
  ``latest`` policy) or whose directory disappeared are unloaded. A version that fails
  to load is logged and skipped (retried only when its files change);
* request batching: concurrent B=1 Predict calls with the same signature and shapes
  (the candidate dimension N may differ, it is padded) are merged into one model call
  (``max_batch``, ``batch_timeout_ms``; ``max_batch=1`` turns it off);
* ``grpc.health.v1`` (SERVING once a version is loaded) and server reflection.

Two ways to run it::

    python -m serving.model_server --base var/models/ranker --name ranker --port 8500

    server = ModelServer(base, "ranker", poll_seconds=1.0)
    port = server.start(0)            # loads what is there, then listens
    ...
    server.stop()

    handle = spawn_model_server(base, "ranker", port=0)   # a child process
    handle.port, handle.process
    handle.stop()                                         # SIGTERM, grace, then kill

The modules follow TF Serving's own seams:

=================  ==============================================================
``signature``      a signature's TensorInfo specs; request tensors decoded and checked
``servable``       one loaded version (SavedModel): call a signature, warm-up replay
``batching``       the request batcher (concurrent B=1 calls -> one model call)
``version_source`` which version directories exist (the file-system source)
``server``         ModelServer (versions, Predict/metadata/status, lifecycle) and
                   the gRPC servicers
``process``        the child-process handle (``spawn_model_server``)
``main``           the command line (``python -m serving.model_server``)
=================  ==============================================================
"""

from serving.model_server.batching import Batcher
from serving.model_server.process import ModelServerProcess, spawn_model_server
from serving.model_server.servable import Servable
from serving.model_server.server import ModelServer
from serving.model_server.signature import DEFAULT_SIGNATURE, ServingError, Signature

__all__ = ["DEFAULT_SIGNATURE", "Batcher", "ModelServer", "ModelServerProcess", "Servable", "ServingError",
           "Signature", "spawn_model_server"]
