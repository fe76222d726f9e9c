"""Matthews correlation coefficient (GLUE's CoLA metric) as an `evaluate` metric module that loads offline.

Same definition as the hub's `matthews_correlation` module (sklearn.metrics.matthews_corrcoef). `evaluate` parses this file's
imports to check requirements: keep one import per line.
"""
import datasets
import evaluate
from sklearn.metrics import matthews_corrcoef

_DESCRIPTION = "Correlation between predicted and true classes, from -1 to 1 (0: chance)."
_CITATION = ""
_KWARGS_DESCRIPTION = "predictions: list of int; references: list of int. Returns {'matthews_correlation': float}."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MatthewsCorrelation(evaluate.Metric):
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
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
