"""Runs in the reference venv: a LoRA (PEFT, q_proj/v_proj r=8) training step of ModelScope's OFAModel, scored the
reference way (full-vocabulary logits at every decoder position, loss on the answer token's logit among the three
answers). stdin JSON {"model_dir", "batch", "steps", "bf16"}; prints JSON like bench/train.py's workers."""

import json
import resource
import sys
import time

import torch
from ofa_oracle import PROMPT, reference_classes
from peft import LoraConfig, get_peft_model
from transformers import BartTokenizer

payload = json.loads(sys.stdin.read())
torch.manual_seed(0)
_, OFAModel = reference_classes()
model = OFAModel.from_pretrained(payload["model_dir"])
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))
model.train()
tok = BartTokenizer(payload["model_dir"] + "/vocab.json", payload["model_dir"] + "/merges.txt")
pairs = [("a man in a red shirt rides a bike down the street.", "a person is outdoors."),
         ("two dogs play in the snow", "the animals are sleeping inside a warm house"),
         ("a woman holds an umbrella.", "it is raining."), ("kids on a beach", "people are outside")]
B = payload["batch"]
srcs = [tok(PROMPT.format(p, h))["input_ids"] for p, h in (pairs * B)[:B]]
L = max(map(len, srcs))
ids = torch.full((B, L), 1)
dec = torch.full((B, L - 1), 1)
for i, s in enumerate(srcs):
    ids[i, :len(s)] = torch.tensor(s)
    dec[i, :len(s) - 1] = torch.tensor(s[:-1])
pos = torch.tensor([len(s) - 2 for s in srcs])
images = torch.rand(B, 3, 480, 480, generator=torch.Generator().manual_seed(0)) * 2 - 1
labels = torch.tensor([0, 1, 2, 0] * B)[:B]
answers = torch.tensor([4420, 117, 2085])
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=payload.get("bf16", False)):
        logits = model(input_ids=ids, patch_images=images, patch_masks=torch.ones(B, dtype=torch.bool),
                       decoder_input_ids=dec).logits
        loss = torch.nn.functional.cross_entropy(logits[torch.arange(B), pos][:, answers], labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


step()
start = time.perf_counter()
for _ in range(payload["steps"]):
    step()
seconds = (time.perf_counter() - start) / payload["steps"]
print(json.dumps({"seconds_per_step": seconds, "samples_per_second": B / seconds,
                  "peak_mb_above_weights": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline}))
