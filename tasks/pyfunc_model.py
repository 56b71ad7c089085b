"""The registered model: an MLflow pyfunc that takes raw text and returns label + probabilities.

Logged as "models from code": MLflow stores this file with the model, and the
`distillery` package travels in the model's code path, so loading needs only the
serving dependencies (onnxruntime, tokenizers, numpy, pandas), not torch.
"""

import warnings

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


# predict() accepts a DataFrame with a `text` column, a Series or a list of strings, so it has no
# type hint (MLflow would then enforce one input type); MLflow warns about that at class creation.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)


class DistilledTextClassifier(PythonModel):
    def load_context(self, context):
        from distillery.onnx_model import OnnxClassifier

        self.classifier = OnnxClassifier.from_dir(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        rows = []
        for pred in self.classifier.predict(_texts(model_input)):
            rows.append({"label": pred["label"],
                         **{f"prob_{name}": p for name, p in pred["probabilities"].items()}})
        return pd.DataFrame(rows)


mlflow.models.set_model(DistilledTextClassifier())
