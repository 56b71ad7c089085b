"""The registered model: an MLflow pyfunc that takes raw text and returns label + probabilities.

Logged as "models from code": MLflow stores this file with the model, and the
`distillery` package travels in the model's code path, so loading needs only the
serving dependencies (onnxruntime, tokenizers, numpy, pandas), not torch.
"""

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel


class DistilledTextClassifier(PythonModel):
    def load_context(self, context):
        from distillery.onnx_model import OnnxClassifier
        from distillery.serving_input import MAX_ROWS_KEY, input_columns

        model_dir = context.artifacts["model_dir"]
        self.classifier = OnnxClassifier.from_dir(model_dir)
        self.columns = input_columns(model_dir)
        self.max_rows = (context.model_config or {}).get(MAX_ROWS_KEY)

    # The model is logged with an output signature only: MLflow's input-schema enforcement would
    # turn null into "None" and True into "True", and drop extra unnamed columns, before predict()
    # could see them. So predict() gets the request as parsed (a list, an array, a dict or a
    # DataFrame) and checks it itself, with the rules training applies to its data.
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from distillery.serving_input import InputError, parse_texts

        try:
            texts = parse_texts(model_input, self.columns, self.max_rows)
        except InputError as exc:  # `mlflow models serve` answers HTTP 400 with the message
            raise MlflowException(f"invalid input, nothing scored: {exc}", error_code=INVALID_PARAMETER_VALUE) from None
        rows = []
        for pred in self.classifier.predict(texts):
            rows.append({"label": pred["label"],
                         **{f"prob_{name}": p for name, p in pred["probabilities"].items()}})
        return pd.DataFrame(rows)


mlflow.models.set_model(DistilledTextClassifier())
