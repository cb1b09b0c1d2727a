"""Gradient checkpointing (`gradient_checkpointing: true`, the Hugging Face argument; LLaMA-Factory's
`disable_gradient_checkpointing` is accepted and ignored) with LoRA and the lean LM head.

Recomputing activations must not change the numbers: one training step with checkpointing gives the same
loss and the same updated adapters as one without (within float32 noise), with reentrant checkpointing
too, where a frozen embedding would otherwise cut the gradient of every checkpointed layer (transformers
then makes the embedding output require grad, `enable_input_require_grads`).
"""

from __future__ import annotations

import pytest
import torch

from trainer.workflow import build_trainer

from .test_ref_cache import make_config

pytestmark = pytest.mark.slow


def one_step(tiny_model, data_dir, out, **overrides):
    cfg = make_config(tiny_model, data_dir, out, out / "cache", finetuning_type="lora", precompute_ref="never",
                      max_steps=1, do_eval=False, eval_strategy="no", lean_head=True, **overrides)
    trainer, _ = build_trainer(cfg)
    trainer.train()
    adapters = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_" in k}
    return trainer, trainer.state.log_history[0]["loss"], adapters


def test_lora_step_with_checkpointing_equals_the_step_without(tiny_model, data_dir, tmp_path):
    _, loss, plain = one_step(tiny_model, data_dir, tmp_path / "plain")
    lora_b = [k for k in plain if "lora_B" in k]
    assert len(plain) >= 8 and len(lora_b) == len(plain) // 2
    for reentrant in (False, True):
        trainer, loss_gc, checkpointed = one_step(
            tiny_model, data_dir, tmp_path / f"gc_{reentrant}", gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": reentrant},
        )
        layers = trainer.model.base_model.model.model.layers
        assert all(layer.gradient_checkpointing for layer in layers)
        assert loss_gc == pytest.approx(loss, abs=1e-6)
        assert plain.keys() == checkpointed.keys()
        # B starts at zero: every B moved, so the gradient reached every checkpointed layer
        assert all(checkpointed[k].abs().sum() > 0 for k in lora_b), reentrant
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-6, msg=name)
