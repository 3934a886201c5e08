"""Runs in the reference venv (shared/oracle): ModelScope's OFAModel loads a model folder (and, optionally, a LoRA
adapter with plain PEFT) and scores tensors prepared by velora.

stdin JSON {"model_dir", "adapter_dir" (optional), "inputs" (a .pt path)}; stdout JSON {"probs", "missing_keys",
"unexpected_keys"} (the loader's own report of what it did not find in the folder)."""

import json
import sys

import torch
from ofa_oracle import reference_classes

payload = json.loads(sys.stdin.read())
_, OFAModel = reference_classes()
model, info = OFAModel.from_pretrained(payload["model_dir"], output_loading_info=True)
model = model.float().eval()
if payload.get("adapter_dir"):
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, payload["adapter_dir"]).eval()
data = torch.load(payload["inputs"])
with torch.no_grad():
    logits = model(input_ids=data["input_ids"], patch_images=data["patch_images"],
                   patch_masks=torch.ones(len(data["input_ids"]), dtype=torch.bool),
                   decoder_input_ids=data["decoder_input_ids"]).logits
rows = torch.arange(logits.shape[0])
probs = logits[rows, data["answer_positions"]][:, torch.tensor(data["answer_ids"])].double().softmax(-1)
print(json.dumps({"probs": probs.tolist(), "missing_keys": sorted(info["missing_keys"]),
                  "unexpected_keys": sorted(info["unexpected_keys"])}))
