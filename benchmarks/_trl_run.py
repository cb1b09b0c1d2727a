"""One TRL 1.16 LoRA preference run from a JSON config: the TRL peer of `benchmarks.sweep_vs_lf`.

    python -m benchmarks._trl_run CONFIG.json

What a TRL user writes for the same LLaMA-Factory config: the model and a `LoraConfig` (rank, alpha =
2 x rank as LLaMA-Factory's default, every linear layer), `DPOTrainer` for `sigmoid` (the reference is
the base with the adapter disabled) or the experimental `CPOTrainer` with `loss_type="simpo"` (TRL's
SimPO), rows of prompt / chosen / rejected text (`rows_file`: the sweep's pairs rendered with the
LLaMA-Factory template, which TRL tokenizes itself), the adapter saved at the end. `bf16` off (TRL's
default turns it on, on a CPU too) and gradient checkpointing as the config says, so every peer does
the same work. Prints one JSON line `TRL_RESULT {...}` with the phases' seconds since the start.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[0]).read_text())
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer

    imported = time.perf_counter() - STARTED
    loss = cfg["pref_loss"]
    common = dict(
        output_dir=cfg["output_dir"],
        per_device_train_batch_size=cfg["per_device_train_batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        learning_rate=cfg["learning_rate"],
        num_train_epochs=cfg["num_train_epochs"],
        lr_scheduler_type=cfg["lr_scheduler_type"],
        warmup_steps=cfg["warmup_ratio"],  # transformers 5: a float < 1 is a ratio of the steps
        logging_steps=cfg["logging_steps"],
        save_strategy="no",
        report_to="none",
        seed=cfg["seed"],
        beta=cfg["pref_beta"],
        bf16=False,
        gradient_checkpointing=cfg["gradient_checkpointing"],
        max_length=cfg["cutoff_len"],
        model_init_kwargs={"dtype": torch.float32},
    )
    if loss == "sigmoid":
        from trl import DPOConfig, DPOTrainer

        trainer_cls, args = DPOTrainer, DPOConfig(loss_type=["sigmoid"], **common)
    elif loss == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        trainer_cls = CPOTrainer
        args = CPOConfig(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=cfg.get("simpo_gamma", 0.5), **common)
    else:
        raise SystemExit(f"_trl_run: pref_loss {loss!r}: only sigmoid and simpo are wired up")
    rows = json.loads(Path(cfg["rows_file"]).read_text())
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_name_or_path"])
    lora = LoraConfig(r=cfg["lora_rank"], lora_alpha=2 * cfg["lora_rank"], lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = trainer_cls(model=cfg["model_name_or_path"], args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=lora)
    ready = time.perf_counter() - STARTED
    output = trainer.train()
    trained = time.perf_counter() - STARTED
    trainer.save_model()
    saved = time.perf_counter() - STARTED
    print("TRL_RESULT " + json.dumps({
        "imports_s": imported, "ready_s": ready, "train_end_s": trained, "saved_s": saved,
        "train_runtime": output.metrics.get("train_runtime"), "steps": trainer.state.global_step,
        "train_loss": output.metrics.get("train_loss"),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
