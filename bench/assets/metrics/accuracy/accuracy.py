"""Accuracy as an `evaluate` metric module, shipped in the repo so it loads offline.

Same definition as the hub's `accuracy` module (sklearn.metrics.accuracy_score). `evaluate` parses
this file's imports to check requirements: keep one import per line.
"""
import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = "Fraction of predictions equal to the reference label."
_CITATION = ""
_KWARGS_DESCRIPTION = "predictions: list of int; references: list of int. Returns {'accuracy': float}."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        return {"accuracy": float(accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight))}
