"""The KRT v1 SDK documentation's Python handler example, as a KRE v1 user would deploy it.

From "SDK for KRT v1" (konstellation-io/website, content/v1/docs/60_kais_runner_sdk/10_sdk/_index.md): its
``init`` example and its "Python handler example for runner compatible with KRT V1", kept as the documentation
has them (two-space indents included). The documentation leaves out what they use; it is filled in around them:
the imports, ``MEASUREMENT``/``MEASUREMENT_TAGS`` (as the KRE runner documentation's own measurement example sets
them), ``get_market_price_and_label`` and the generated ``_pb2`` modules. Two changes, both marked: the snippet's
``import pandas as pd`` is left out (nothing uses it), and ``init`` also stores the ``currency`` the handler reads,
from ``OUTPUT_PRICE_CURRENCY`` as the later SDK's version of this example does (the snippet's ``init`` sets only
``model``, so its ``ctx.get('currency')`` would fail on KRE v1 too).
"""

import os

import joblib
from google.protobuf.json_format import MessageToDict
from internal_nodes_pb2 import ModelOutput
from public_input_pb2 import Response

MEASUREMENT = 'features'
MEASUREMENT_TAGS = { 'version': 1 }

PRICE_RANGES = ("10-90", "91-180", "181-400", "+401")
PRICE_LABELS = ("low", "mid", "high", "lux")


def get_market_price_and_label(price_category, currency):
    return f"{PRICE_RANGES[price_category]} {currency}", PRICE_LABELS[price_category]


async def init(ctx):
  ctx.logger.info("[worker init]")
  ctx.set('model', joblib.load(ctx.path('models/model.joblib')))
  ctx.set('currency', os.getenv('OUTPUT_PRICE_CURRENCY', 'EUR'))  # added: see the module docstring


async def handler(ctx, data):
  req = ModelOutput()
  data.Unpack(req)

  market_price, label = get_market_price_and_label(req.price_category, ctx.get('currency'))
  ctx.logger.info(f"Estimated market price[{market_price}] with label[{label}]")

  # Stores input fields and prediction to measurements
  measurement_fields = MessageToDict(req.request, preserving_proto_field_name=True,
                                       including_default_value_fields=True)
  measurement_fields['prediction'] = label
  ctx.measurement.save(MEASUREMENT, measurement_fields, MEASUREMENT_TAGS)

  res = Response()
  res.success = True
  res.message = 'Predicted market price'
  res.market_price = market_price
  res.category = label

  return res
