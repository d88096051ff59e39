"""``ctx.prediction.save``'s document, as KRE v1 built it (kre-py's ``context_prediction.py``), checked first."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

# The collection KRE's admin API reads its classification dashboards from.
PREDICTIONS_COLLECTION = "classificationMetrics"
ERR_MISSING_VALUES = "missing_values"
ERR_NEW_LABELS = "new_labels"
PREDICTION_ERRORS = (ERR_MISSING_VALUES, ERR_NEW_LABELS)


def prediction_document(
    *, predicted_value: Any, true_value: Any, extra: Any, utcdate: Any, error: Any, version_id: str, version: str
) -> dict[str, Any]:
    """The ``classificationMetrics`` document, keys in KRE's order; a ``ValueError`` or ``TypeError`` names what is
    wrong with the arguments."""
    _check(predicted_value=predicted_value, true_value=true_value, error=error)
    return {
        "date": rfc3339(datetime.now(timezone.utc) if utcdate is None else utcdate),
        "error": error,
        "predictedValue": predicted_value,
        "trueValue": true_value,
        "extra": extra,
        "versionId": version_id,
        "versionName": version,
    }


def _check(*, predicted_value: Any, true_value: Any, error: Any) -> None:
    if error != "":
        if error not in PREDICTION_ERRORS:
            raise ValueError(f"ctx.prediction.save: error={error!r} is none of {', '.join(PREDICTION_ERRORS)}; "
                             "leave it empty for a prediction")
        return
    for name, value in (("predicted_value", predicted_value), ("true_value", true_value)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"ctx.prediction.save: {name}={value!r} must be a non-empty string (or give an error)")


def rfc3339(utcdate: datetime) -> str:
    """``2020-04-06T09:02:09.277853Z``: a naive datetime is taken as UTC; one with another offset is refused."""
    if not isinstance(utcdate, datetime):
        raise TypeError(f"ctx.prediction.save: utcdate must be a datetime in UTC, not {type(utcdate).__name__}")
    offset = utcdate.utcoffset()
    if offset and offset.total_seconds() != 0:
        raise ValueError(f"ctx.prediction.save: utcdate {utcdate.isoformat()} is not in UTC")
    return utcdate.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
