"""Exact match of generated answers as an `evaluate` metric module that loads offline.

Same definition as the hub's `exact_match` module without its options (the harness normalises first). `evaluate` parses this file's
imports to check requirements: keep one import per line.
"""
import datasets
import evaluate

_DESCRIPTION = "Share of predictions equal to their reference."
_CITATION = ""
_KWARGS_DESCRIPTION = "predictions: list of str; references: list of str. Returns {'exact_match': float}."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        return {"exact_match": sum(p == r for p, r in zip(predictions, references)) / max(1, len(references))}
