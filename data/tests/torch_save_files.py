"""Writes torch.save and pickle files with the real PyTorch and NumPy, and what each holds.

    python torch_save_files.py OUT_DIR

writes the files into OUT_DIR and OUT_DIR/expected.json: a list of cases
{"file", "kind": "torch" | "pickle", and "value" (the expected object, encoded below) or
"error" (a substring of the expected error) or "other" (a substring of the description of an
object the reader does not rebuild)}. Encoding: None/bool/int/float/str as JSON; a tensor or
array {"array": {"dtype", "shape", "values": row-major, as float64 or int}}; a dict
{"dict": [[key, value], ...]}; a list {"list": [...]}; a tuple {"tuple": [...]}.

Run by data/tests/torch_save.rs with the project's Python environment (scripts/setup).
"""

import collections
import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import torch

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)
CASES = []
torch.manual_seed(0)
rng = np.random.default_rng(0)

TORCH_NAMES = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
    torch.float64: "float64", torch.int64: "int64", torch.int32: "int32",
    torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool",
}


def encode(v):
    if isinstance(v, torch.Tensor):
        t = v.detach()
        values = t.to(torch.float64) if t.is_floating_point() else t.to(torch.int64)
        return {"array": {"dtype": TORCH_NAMES[t.dtype], "shape": list(t.shape),
                          "values": values.reshape(-1).tolist()}}
    if isinstance(v, np.ndarray):
        values = v.astype(np.float64) if v.dtype.kind == "f" else v.astype(np.int64)
        return {"array": {"dtype": {"b": "bool"}.get(v.dtype.kind, v.dtype.name),
                          "shape": list(v.shape), "values": values.reshape(-1).tolist()}}
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, dict):
        return {"dict": [[encode(k), encode(x)] for k, x in v.items()]}
    if isinstance(v, list):
        return {"list": [encode(x) for x in v]}
    if isinstance(v, tuple):
        return {"tuple": [encode(x) for x in v]}
    return v


def torch_case(name, obj, expect=None, **save_args):
    torch.save(obj, OUT / name, **save_args)
    CASES.append({"file": name, "kind": "torch", "value": encode(obj if expect is None else expect)})


def pickle_case(name, obj, protocol):
    with open(OUT / name, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    CASES.append({"file": name, "kind": "pickle", "value": encode(obj)})


# Feature tensors as CLAM's pt_files hold them, in every floating-point type.
features = torch.randn(37, 24)
torch_case("features_f32.pt", features)
for dtype in (torch.float16, torch.bfloat16, torch.float64):
    torch_case(f"features_{TORCH_NAMES[dtype]}.pt", features.to(dtype))
# Integer and bool tensors, scalars and empty tensors.
torch_case("ints.pt", {"i64": torch.arange(-5, 7), "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
                       "i16": torch.tensor([-3, 300], dtype=torch.int16),
                       "i8": torch.tensor([-128, 127], dtype=torch.int8),
                       "u8": torch.tensor([0, 255], dtype=torch.uint8),
                       "bool": torch.tensor([True, False, True]),
                       "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)})
# Views: a transpose (strides), a slice (storage offset), two tensors sharing a storage.
base = torch.randn(6, 5)
torch_case("views.pt", {"transposed": base.t(), "rows": base[2:5], "column": base[:, 3],
                        "step": base[::2, 1::2], "same": base})
# A state_dict (OrderedDict with _metadata), a parameter, nested dicts, lists and tuples.
net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
torch_case("state_dict.pt", net.state_dict())
torch_case("parameter.pt", torch.nn.Parameter(torch.randn(3)))
torch_case("nested.pt", {"model": net.state_dict(), "epoch": 12, "best": 0.25, "name": "fold 0",
                         "history": [1, 2.5, None, True], "pair": (3, "x")})
# The format before PyTorch 1.6 (still written on request), with two element types.
torch_case("legacy.pt", {"w": torch.randn(3, 2), "idx": torch.arange(4), "h": torch.randn(2).half(),
                         "view": base[1:3]},
           _use_new_zipfile_serialization=False)

# One state_dict referenced twice (memoized before its items are set).
sd = net.state_dict()
torch_case("shared_dict.pt", {"best": sd, "state_dict": sd})
# An expanded tensor (stride 0): more elements than its storage, refused.
torch.save(torch.zeros(1).expand(1000), OUT / "expanded.pt")
CASES.append({"file": "expanded.pt", "kind": "torch", "error": "expanded"})

# A whole pickled module, not a state_dict: described by its class.
torch.save(net, OUT / "module.pt")
CASES.append({"file": "module.pt", "kind": "torch", "other": "torch.nn.modules.container.Sequential"})
# A TorchScript archive: refused with a message saying so.
torch.jit.save(torch.jit.script(net), OUT / "scripted.pt")
CASES.append({"file": "scripted.pt", "kind": "torch", "error": "TorchScript"})
# A file that is not torch.save's at all.
(OUT / "text.pt").write_bytes(b"hello")
CASES.append({"file": "text.pt", "kind": "torch", "error": "not a torch.save file"})

# Tile labels as MS-CLAM users pickle them: lists of Python or NumPy integers, NumPy arrays,
# at every protocol that matters (2: Python 2 era and torch; 4: Python 3.8+ default; 5).
mask = rng.random(50) < 0.3
for protocol in (2, 4, 5):
    pickle_case(f"labels_list_p{protocol}.pkl", [int(i) for i in np.where(mask)[0]], protocol)
    pickle_case(f"labels_np_ints_p{protocol}.pkl", list(np.where(mask)[0]), protocol)
    pickle_case(f"labels_array_p{protocol}.pkl", np.where(mask)[0], protocol)
    pickle_case(f"labels_mask_p{protocol}.pkl", mask, protocol)
pickle_case("labels_tuple.pkl", tuple(int(i) for i in np.where(mask)[0]), 4)
pickle_case("labels_int32.pkl", np.where(mask)[0].astype(np.int32), 4)
pickle_case("labels_big_endian.pkl", np.where(mask)[0].astype(">i8"), 4)
# Two big-endian arrays: the second one's dtype is a memo reference to the first's.
big = np.arange(3, dtype=">i8")
pickle_case("big_endian_pair.pkl", [big, big.copy()], 4)
pickle_case("big_endian_pair_p2.pkl", [big, big.copy()], 2)
pickle_case("fortran.pkl", np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)), 4)
pickle_case("mixed.pkl", {"a": [np.float32(1.5), np.int16(-2), np.bool_(True)], "b": (None, "s")}, 4)

(OUT / "expected.json").write_text(json.dumps(CASES))
print(f"{len(CASES)} cases in {OUT}")
