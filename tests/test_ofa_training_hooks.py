"""The port works under PEFT LoRA, and gradient checkpointing really recomputes and gives the same gradients."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from velora.ofa import OFAForVisualEntailment
from velora.ofa.checkpoint import load_pretrained as load_checkpoint


def load_pretrained(model_dir):
    return load_checkpoint(model_dir, OFAForVisualEntailment, answer_ids=[4420, 117, 2085])


def batch(model, B=2, L=9, image=64):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    ids[1, -2:] = torch.tensor([2, 1])  # second row is one token shorter (right padding)
    dec = ids[:, :-1].clone()
    dec[1, -1] = 1
    return dict(input_ids=ids, decoder_input_ids=dec, answer_positions=torch.tensor([L - 2, L - 3]),
                attention_mask=ids.ne(1), patch_images=torch.randn(B, 3, image, image, generator=g))


def loss_of(model, inputs):
    logits = model(**inputs)
    return torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]))


def lora(model):
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    return get_peft_model(model, config)


def test_lora_wraps_encoder_self_and_decoder_self_and_cross_attention(tiny_model_dir):
    model = load_pretrained(tiny_model_dir)
    peft_model = lora(model)
    wrapped = {name.split(".lora_A")[0] for name, _ in peft_model.named_parameters() if "lora_A" in name}
    cfg = model.config
    expected = {f"base_model.model.encoder.layers.{i}.self_attn.{p}" for i in range(cfg.encoder_layers)
                for p in ("q_proj", "v_proj")}
    expected |= {f"base_model.model.decoder.layers.{i}.{a}.{p}" for i in range(cfg.decoder_layers)
                 for a in ("self_attn", "cross_attn") for p in ("q_proj", "v_proj")}
    assert wrapped == expected


def test_lora_gradients_flow_to_adapters_only(tiny_model_dir):
    model = load_pretrained(tiny_model_dir)
    peft_model = lora(model)
    peft_model.train()
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make it non-zero so A gets a gradient too
            torch.nn.init.normal_(p, std=0.1)
    loss_of(model, batch(model)).backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    frozen = [p for n, p in peft_model.named_parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen)


def test_adapter_round_trips_in_peft_layout(tiny_model_dir, tmp_path):
    model = load_pretrained(tiny_model_dir)
    peft_model = lora(model)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    peft_model.eval()
    inputs = batch(model)
    with torch.no_grad():
        expected = model(**inputs)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    reloaded = PeftModel.from_pretrained(load_pretrained(tiny_model_dir), tmp_path / "adapter")
    with torch.no_grad():
        actual = reloaded(**inputs)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("with_lora", [False, True])
def test_gradient_checkpointing_recomputes_and_matches(tiny_model_dir, with_lora):
    def grads(checkpointing: bool):
        model = load_pretrained(tiny_model_dir)
        torch.manual_seed(0)  # same LoRA A initialisation in both runs
        target = lora(model) if with_lora else model
        if with_lora:
            for name, p in target.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
        target.train()
        model.config.dropout = 0.0  # deterministic forward, so the recomputation must reproduce it exactly
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if checkpointing:
            model.gradient_checkpointing_enable()
        calls = []
        model.encoder.layers[0].fc1.register_forward_hook(lambda *_: calls.append(1))
        loss_of(model, batch(model)).backward()
        return {n: p.grad.clone() for n, p in target.named_parameters() if p.grad is not None}, len(calls)

    plain, plain_calls = grads(False)
    recomputed, ckpt_calls = grads(True)
    assert plain_calls == 1 and ckpt_calls == 2  # forward, then again during backward
    assert plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-7)
