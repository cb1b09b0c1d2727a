"""The registered model as an MLflow pyfunc: `mlflow.pyfunc.load_model("models:/<sweep>/<version>")`.

MLflow's transformers flavor cannot log a local checkpoint under transformers 5, so the best trial's files
(`best_model.register_best`) get a pyfunc flavor with this module as its loader: the module is copied
into the logged model (`code/`), needs only torch and transformers where it is loaded, and reads the
Hugging Face files that sit at the model's top level (a LoRA adapter is loaded onto its base model with
peft). `predict(prompts)` returns greedy continuations (new text only), `params={"max_new_tokens": N}`.
"""

from __future__ import annotations

from pathlib import Path

MAX_NEW_TOKENS = 64


class _CausalLM:
    def __init__(self, path: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if (Path(path) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            self.model = AutoPeftModelForCausalLM.from_pretrained(path)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(path)
        self.model.eval()

    def predict(self, model_input, params: dict | None = None) -> list[str]:
        """Greedy answer to each prompt (a list of strings, or a one-column DataFrame)."""
        import torch

        prompts = list(model_input.iloc[:, 0]) if hasattr(model_input, "iloc") else list(model_input)
        max_new = int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS))
        stops = [i for i in {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} if i is not None]
        answers = []
        with torch.no_grad():
            for prompt in prompts:
                ids = torch.tensor([self.tokenizer.encode(prompt)])
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=max_new, eos_token_id=stops,
                                          pad_token_id=self.tokenizer.pad_token_id)
                answers.append(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return answers


def _load_pyfunc(data_path: str) -> _CausalLM:
    """MLflow's loader hook: `data_path` is the logged model's folder (the `data` of the flavor)."""
    return _CausalLM(data_path)


def add_pyfunc_flavor(folder: Path) -> None:
    """Write `MLmodel` (pyfunc flavor, this module as loader, copied to `code/`) into a model folder."""
    import shutil

    import mlflow.pyfunc
    from mlflow.models import Model

    (folder / "code").mkdir()
    shutil.copy2(Path(__file__), folder / "code" / "prefsweep_pyfunc_model.py")
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    model = Model(signature=ModelSignature(  # params must be in the signature, or predict drops them
        inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", MAX_NEW_TOKENS)])))
    mlflow.pyfunc.add_to_model(model, loader_module="prefsweep_pyfunc_model", data=".", code="code")
    model.save(str(folder / "MLmodel"))
