"""A Python grpcio client generated from proto/rllr/v1/rllr.proto calls Score and Classify.

Run by the `python_grpcio_client` test (cargo test -p rllr-server -- --ignored python_grpcio_client),
which starts the server on a free port and passes its address: python3 python_client.py ADDR PROTO_DIR.
Needs `pip install grpcio grpcio-tools`.
"""
import math
import sys
import tempfile

import grpc
from grpc_tools import protoc

addr, proto_dir = sys.argv[1], sys.argv[2]
out = tempfile.mkdtemp()
rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", "rllr/v1/rllr.proto"])
assert rc == 0, f"protoc failed: {rc}"
sys.path.insert(0, out)
from rllr.v1 import rllr_pb2 as pb  # noqa: E402
from rllr.v1 import rllr_pb2_grpc as rpc  # noqa: E402

channel = grpc.insecure_channel(addr)
reward = rpc.RewardServiceStub(channel)
policy = rpc.PolicyServiceStub(channel)

item = pb.ScoreItem(input=pb.Input(text="A man sleeps.", text_pair="A person rests."),
                    rationale="Sleeping is resting.", label="entailment")
other = pb.ScoreItem(input=pb.Input(text="A dog runs.", text_pair="A cat sits."),
                     rationale="Different animals.", label="neutral")
r = reward.Score(pb.ScoreRequest(items=[item, other], label_model="rm"), timeout=30)
assert len(r.rewards) == 2, r
for x in r.rewards:
    assert math.isfinite(x.label_reward) and x.tokens > 0, x
    assert x.mixed_reward == x.label_reward and not x.HasField("rationale_reward"), x
assert r.metadata.request_id.startswith("req-"), r.metadata
alone = reward.Score(pb.ScoreRequest(items=[item], label_model="rm"), timeout=30)
assert abs(alone.rewards[0].label_reward - r.rewards[0].label_reward) < 1e-5

mixed = reward.Score(pb.ScoreRequest(items=[item], label_model="rm", rationale_model="rm2", **{"lambda": 0.5}), timeout=30)
m = mixed.rewards[0]
assert abs(m.mixed_reward - (min(m.label_reward, 0.5) + m.rationale_reward)) < 1e-5, m

c = policy.Classify(pb.ClassifyRequest(
    inputs=[pb.Input(text="A man sleeps.", text_pair="A person rests.")], model="pol",
    params=pb.GenerationParams(max_new_tokens=8)), timeout=60)
assert len(c.results) == 1, c
res = c.results[0]
assert 1 <= res.generated_tokens <= 8 and res.prompt_tokens > 0, res
assert res.finish_reason in ("eos", "length"), res

try:
    reward.Score(pb.ScoreRequest(items=[pb.ScoreItem(input=pb.Input(text="x", text_pair="y"), label="maybe")], label_model="rm"))
    raise AssertionError("unknown label accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "items[0].label" in e.details(), e

print(f"python grpcio client OK: label_reward={r.rewards[0].label_reward:.5f} classify={res.finish_reason}/{res.generated_tokens}")
