"""Macro-averaged F1 (the unweighted mean of every class's F1, as SuperGLUE scores CB) as an `evaluate` metric module that loads offline.

Same definition as the hub's `f1` module with average="macro" (sklearn.metrics.f1_score). `evaluate` parses this file's
imports to check requirements: keep one import per line.
"""
import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "Mean over classes of the harmonic mean of each class's precision and recall."
_CITATION = ""
_KWARGS_DESCRIPTION = "predictions: list of int; references: list of int. Returns {'f1_macro': float}."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1Macro(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references):
        return {"f1_macro": float(f1_score(references, predictions, average="macro", zero_division=0))}
