"""The served model refuses what training refuses (issue 21): null, empty, whitespace-only and
non-text values, wrong or missing columns, too many rows. Each bad request body goes through
MLflow's own scoring-server code (`invocations`, as `mlflow models serve` calls it) into the
registered pyfunc class, and must come back as MLflow's INVALID_PARAMETER_VALUE (HTTP 400) with
a message naming the row or column; good bodies still score. (The e2e test does the same over a
real `mlflow models serve`.)"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from distillery.serving_input import InputError, input_columns, parse_texts


class StubClassifier:
    labels = ["neg", "pos"]

    def predict(self, texts):
        self.seen = list(texts)
        return [{"label": "pos" if "good" in str(t) else "neg", "probabilities": {"neg": 0.5, "pos": 0.5}}
                for t in texts]


@pytest.fixture(scope="module")
def served():
    """The registered pyfunc class, as MLflow's scoring server calls it (no input schema: see register.py)."""
    from mlflow.models import Model

    from tasks.pyfunc_model import DistilledTextClassifier

    model = DistilledTextClassifier()
    model.classifier, model.columns, model.max_rows = StubClassifier(), ("text",), 3

    class Served:  # the PyFuncModel face `invocations` expects
        metadata = Model()  # no signature

        def predict(self, data, params=None):
            return model.predict(None, data, params)

    return Served(), model


def post(served, body) -> tuple[int, str]:
    """Status and text as `mlflow models serve` would answer (its handler maps MlflowException to HTTP)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import invocations

    try:
        result = invocations(json.dumps(body), "application/json", served[0], None)
    except MlflowException as exc:
        return exc.get_http_status_code(), exc.message
    return result.status, result.response


BAD_BODIES = [
    ({"inputs": [None]}, "row 0: null"),
    ({"inputs": ["fine", ""]}, "row 1: empty text"),
    ({"inputs": ["   \t"]}, "row 0: whitespace-only text"),
    ({"inputs": [True]}, "row 0: expected a string, got bool"),
    ({"inputs": [3]}, "row 0: expected a string, got int"),
    ({"inputs": [1.5]}, "row 0: expected a string, got float"),
    ({"inputs": [{"a": 1}]}, "unexpected ['a']"),
    ({"inputs": [["x", "y"]]}, "2 unnamed columns"),
    ({"inputs": [["x"], "y"]}, "Invalid input"),  # refused by MLflow's parser already
    ({"inputs": {"review": ["hi"]}}, "missing ['text']; unexpected ['review']"),
    ({"dataframe_split": {"columns": ["review"], "data": [["hi"]]}}, "missing ['text']"),
    ({"dataframe_split": {"data": [["hi", "there"]]}}, "2 unnamed columns"),
    ({"dataframe_split": {"columns": ["text", "extra"], "data": [["hi", "x"]]}}, "unexpected ['extra']"),
    ({"dataframe_split": {"columns": ["text"], "data": [[None]]}}, "row 0: null"),
    ({"dataframe_records": [{"text": "ok"}, {"text": 5}]}, "row 1: expected a string, got int"),
    ({"dataframe_records": [{"review": "hi"}]}, "missing ['text']"),
    ({"inputs": ["a", "b", "c", "d"]}, "4 rows; at most 3 per request"),
    ({"inputs": []}, "no rows"),
]


@pytest.mark.parametrize("body,needle", BAD_BODIES, ids=[json.dumps(b)[:60] for b, _ in BAD_BODIES])
def test_bad_request_is_refused_with_400_and_the_reason(served, body, needle):
    status, message = post(served, body)
    assert status == 400, message
    assert needle in message


GOOD_BODIES = [
    {"inputs": ["good film", "bad film"]},
    {"instances": ["good film", "bad film"]},
    {"inputs": {"text": ["good film", "bad film"]}},
    {"dataframe_split": {"columns": ["text"], "data": [["good film"], ["bad film"]]}},
    {"dataframe_split": {"data": [["good film"], ["bad film"]]}},  # exactly one unnamed column
    {"dataframe_records": [{"text": "good film"}, {"text": "bad film"}]},
]


@pytest.mark.parametrize("body", GOOD_BODIES, ids=[json.dumps(b)[:60] for b in GOOD_BODIES])
def test_good_request_still_scores(served, body):
    status, text = post(served, body)
    assert status == 200, text
    assert [row["label"] for row in json.loads(text)["predictions"]] == ["pos", "neg"]
    assert served[1].classifier.seen == ["good film", "bad film"]


def test_python_callers_forms():
    """What `mlflow.pyfunc.load_model(...).predict` gets from Python callers (the register step's re-scoring)."""
    assert parse_texts(["a", "b"]) == ["a", "b"]
    assert parse_texts("one text") == ["one text"]
    assert parse_texts(pd.Series(["a"])) == ["a"]
    assert parse_texts(np.array(["a", "b"])) == ["a", "b"]
    assert parse_texts(pd.DataFrame({"text": ["a"]})) == ["a"]
    with pytest.raises(InputError, match="row 0: null"):
        parse_texts(pd.DataFrame({"text": [np.nan]}))
    with pytest.raises(InputError, match=r"row 2: null; row 3: empty text"):
        parse_texts(["a", "b", None, ""])
    with pytest.raises(InputError, match=r"\(and 2 more\)"):
        parse_texts([None] * 7)
    with pytest.raises(InputError, match="input is a int"):
        parse_texts(5)


def test_two_input_columns_from_the_model_directory(tmp_path):
    """Sentence-pair models declare their columns in distillery.json; rows become tuples."""
    (tmp_path / "distillery.json").write_text(json.dumps({"input_columns": ["premise", "hypothesis"]}))
    columns = input_columns(tmp_path)
    assert columns == ("premise", "hypothesis")
    assert input_columns(tmp_path / "absent") == ("text",)
    assert parse_texts(pd.DataFrame({"hypothesis": ["h"], "premise": ["p"]}), columns) == [("p", "h")]
    assert parse_texts([["p", "h"]], columns) == [("p", "h")]
    with pytest.raises(InputError, match="row 0, column 'hypothesis': whitespace-only text"):
        parse_texts(pd.DataFrame({"premise": ["p"], "hypothesis": [" "]}), columns)
    with pytest.raises(InputError, match=r"missing \['hypothesis'\]"):
        parse_texts(pd.DataFrame({"premise": ["p"]}), columns)
