"""Binary F1 of the positive class (label 1) as an `evaluate` metric module that loads offline.

Same definition as the hub's `f1` module (sklearn.metrics.f1_score). `evaluate` parses this file's
imports to check requirements: keep one import per line.
"""
import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "Harmonic mean of precision and recall of the positive class (label 1)."
_CITATION = ""
_KWARGS_DESCRIPTION = "predictions: list of int; references: list of int. Returns {'f1': float}."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        score = f1_score(references, predictions, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight, zero_division=0)
        return {"f1": float(score)}
