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


def _pairs(model_input, columns: list[str]) -> list[tuple[str, str]]:
    """(text, text_pair) per row of a sentence-pair request: both columns must be there."""
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        raise MlflowException(f"this model classifies text pairs: the input needs the columns {columns}; "
                              f"missing {missing} (got {[str(c) for c in frame.columns]})",
                              error_code=INVALID_PARAMETER_VALUE)  # the scoring server answers 400
    return [(str(a), str(b)) for a, b in zip(frame[columns[0]], frame[columns[1]])]


class DistilledTextClassifier(PythonModel):
    def load_context(self, context):
        from distillery.onnx_model import OnnxClassifier

        self.classifier = OnnxClassifier.from_dir(context.artifacts["model_dir"])
        # The columns the model was trained on (distillery.json `input_columns`): ["text"] or ["text", "text_pair"].
        self.input_columns = self.classifier.input_columns

    # The model is logged with a signature (one string input; label + one probability per class out,
    # inferred from an input example), so MLflow hands predict() a DataFrame whatever the caller
    # passed: a list of strings, a Series, or a DataFrame with one string column (e.g. `text`).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = []
        inputs = _pairs(model_input, self.input_columns) if len(self.input_columns) == 2 else _texts(model_input)
        for pred in self.classifier.predict(inputs):
            rows.append({"label": pred["label"],
                         **{f"prob_{name}": p for name, p in pred["probabilities"].items()}})
        return pd.DataFrame(rows)


mlflow.models.set_model(DistilledTextClassifier())
