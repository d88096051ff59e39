"""The iris example's classifier node as the benchmark runs it: examples/iris/src/classifier.py's own Processor.

Its ``setup`` loads the example's real scikit-learn model from ``KRT_BASE_PATH``/models/model.joblib, where
iris_bench.py saves what examples/iris/train.py trains. ``KRT_BATCH_MAX_SIZE=1`` runs it one request per call
(``process``); unset, it classifies in batches (``process_batch``, one ``predict_proba`` per batch).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "iris" / "src"))

from classifier import Classifier  # iris_pb2 sits beside it

__all__ = ["Classifier"]
