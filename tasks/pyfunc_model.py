"""The registered model: an MLflow pyfunc that takes raw text and returns label + probabilities.

Logged as "models from code": MLflow stores this file with the model, and the
`distillery` package travels in the model's code path, so loading needs only the
serving dependencies (onnxruntime, tokenizers, numpy, pandas), not torch.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


def _texts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return [str(t) for t in model_input[column].tolist()]
    if isinstance(model_input, pd.Series):
        return [str(t) for t in model_input.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]


class DistilledTextClassifier(PythonModel):
    def load_context(self, context):
        from distillery.onnx_model import OnnxClassifier

        self.classifier = OnnxClassifier.from_dir(context.artifacts["model_dir"])

    # The model is logged with a signature (one string input; label + one probability per class out,
    # inferred from an input example), so MLflow hands predict() a DataFrame whatever the caller
    # passed: a list of strings, a Series, or a DataFrame with one string column (e.g. `text`).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = []
        for pred in self.classifier.predict(_texts(model_input)):
            rows.append({"label": pred["label"],
                         **{f"prob_{name}": p for name, p in pred["probabilities"].items()}})
        return pd.DataFrame(rows)


mlflow.models.set_model(DistilledTextClassifier())
