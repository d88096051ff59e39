r"""The iris workflow's node: four measurements in, the species and every class's probability out.

A ``krt_runner.Processor`` with typed requests: ``setup`` loads the model
once, ``validate`` rejects a flower that cannot be one, ``process_batch``
classifies a batch of flowers with one ``predict_proba`` (the runner collects
the requests into batches of up to ``KRT_BATCH_MAX_SIZE``, 32 by default; see
docs/writing-nodes.md). All are sync, so they run on a worker thread and
predicting never blocks NATS. The runner unpacks each payload into an
``iris.Request``; a payload of another type gets an error answer naming both types.

Run it on its own, in local dev mode (after ``python train.py``)::

    python src/classifier.py --request \
        '{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'
"""

import math

import joblib
from iris_pb2 import Request, Response

import krt_runner

MEASUREMENTS = ("sepal_length", "sepal_width", "petal_length", "petal_width")
# No iris flower part is longer than this many centimetres: a larger value is a unit mistake (mm?).
LONGEST_CM = 100.0


class Classifier(krt_runner.Processor):
    def setup(self, ctx):
        self.model = joblib.load(ctx.path("models/model.joblib"))
        ctx.logger.info("model loaded", classes=[str(name) for name in self.model.classes_])

    def validate(self, ctx, req: Request) -> None:
        for name in MEASUREMENTS:
            value = getattr(req, name)
            if not (math.isfinite(value) and 0 < value <= LONGEST_CM):
                raise ValueError(f"{name} must be a length in cm between 0 and {LONGEST_CM:g}, got {value:g}")

    def process_batch(self, ctx, requests: list[Request]) -> list[Response]:
        flowers = [[getattr(req, name) for name in MEASUREMENTS] for req in requests]
        classes = [str(name) for name in self.model.classes_]
        answers = []
        for scores in self.model.predict_proba(flowers):  # one call for the whole batch
            probabilities = {name: float(p) for name, p in zip(classes, scores, strict=True)}
            species = max(probabilities, key=probabilities.get)
            ctx.measurement.save("iris_predictions", {"probability": probabilities[species]}, {"species": species})
            answers.append(Response(species=species, probabilities=probabilities))
        return answers

    def process(self, ctx, req: Request) -> Response:
        """One flower at a time: what the node calls with KRT_BATCH_MAX_SIZE=1."""
        return self.process_batch(ctx, [req])[0]


if __name__ == "__main__":
    krt_runner.serve(Classifier)
