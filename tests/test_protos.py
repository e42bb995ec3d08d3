"""The generated gRPC code is reproducible from serving/protos (what `make proto` runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "serving/protos/recsys/v1/recommender.proto"
GENERATED = ("recommender_pb2.py", "recommender_pb2.pyi", "recommender_pb2_grpc.py")


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", PROTO], cwd=ROOT, check=True)
    for name in GENERATED:
        fresh = (tmp_path / "serving/protos/recsys/v1" / name).read_text()
        committed = (ROOT / "serving/protos/recsys/v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto`"


def test_service_matches_the_contract() -> None:
    from serving.protos.recsys.v1 import recommender_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Recommender"]
    assert service.full_name == "recsys.v1.Recommender"
    assert {m.name for m in service.methods} == {"Recommend", "Rank", "SimilarMovies", "RecordRating"}
    item = {f.name for f in pb.Item.DESCRIPTOR.fields}
    assert {"movie_id", "title", "score", "predicted_rating", "sources", "reason"} <= item
    assert {"items", "model_version", "degraded"} <= {f.name for f in pb.RecommendResponse.DESCRIPTOR.fields}
