"""The iris workflow's node: four measurements in, the species and every class's probability out.

A plain KRE v1 handler module. ``init`` loads the model once; the sync
``handler`` runs on a worker thread, so predicting never blocks NATS.
"""

import joblib
from iris_pb2 import Request, Response


def init(ctx):
    model = joblib.load(ctx.path("models/model.joblib"))
    ctx.set("model", model)
    ctx.logger.info("model loaded", classes=[str(name) for name in model.classes_])


def handler(ctx, data):
    request = Request()
    if not data.Unpack(request):
        raise ValueError(f"expected an iris.Request, got {data.type_url or 'an empty payload'}")
    model = ctx.get("model")
    flower = [[request.sepal_length, request.sepal_width, request.petal_length, request.petal_width]]
    scores = model.predict_proba(flower)[0]
    probabilities = {str(name): float(p) for name, p in zip(model.classes_, scores, strict=True)}
    species = max(probabilities, key=probabilities.get)
    ctx.measurement.save("iris_predictions", {"probability": probabilities[species]}, {"species": species})
    return Response(species=species, probabilities=probabilities)
