"""Runs in the reference venv (shared/oracle): times ModelScope's OFAModel on tensors prepared by velora.

stdin: {"model_dir", "inputs" (a .pt path), "batch_sizes", "repeats"}; stdout: JSON with seconds and probabilities.
"""

import json
import sys
import time

import torch
from ofa_oracle import reference_classes

payload = json.loads(sys.stdin.read())
torch.set_num_threads(torch.get_num_threads())
_, OFAModel = reference_classes()
model = OFAModel.from_pretrained(payload["model_dir"]).eval()
data = torch.load(payload["inputs"])
n = len(data["input_ids"])
answer_ids = torch.tensor(data["answer_ids"])


def run(batch_size: int) -> torch.Tensor:
    probs = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        with torch.no_grad():
            logits = model(input_ids=data["input_ids"][sl], patch_images=data["patch_images"][sl],
                           patch_masks=torch.ones(len(data["input_ids"][sl]), dtype=torch.bool),
                           decoder_input_ids=data["decoder_input_ids"][sl]).logits
        rows = torch.arange(logits.shape[0])
        probs.append(logits[rows, data["answer_positions"][sl]][:, answer_ids].float().softmax(-1))
    return torch.cat(probs)


result = {"seconds": {}, "probs": None}
for batch_size in payload["batch_sizes"]:
    run(batch_size)  # warm-up
    best = float("inf")
    for _ in range(payload["repeats"]):
        start = time.perf_counter()
        probs = run(batch_size)
        best = min(best, time.perf_counter() - start)
    result["seconds"][str(batch_size)] = best
    result["probs"] = probs.tolist()
print(json.dumps(result))
