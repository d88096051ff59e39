"""Unit test of the iris node (a Processor) with krt_runner.testing: the model is trained into a temporary copy.

Run it with  pytest examples/iris
"""

import shutil
import sys
from pathlib import Path

import pytest

from krt_runner.errors import InvalidRequestError
from krt_runner.testing import run_node

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "src"))  # the generated iris_pb2, as the node imports it

from iris_pb2 import Request, Response  # noqa: E402


@pytest.fixture(scope="module")
def iris_copy(tmp_path_factory):
    """The example's files with a freshly trained models/model.joblib."""
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(HERE))
    import joblib
    from train import train

    copy = tmp_path_factory.mktemp("iris")
    shutil.copytree(HERE / "src", copy / "src")
    (copy / "models").mkdir()
    model, _ = train()
    joblib.dump(model, copy / "models" / "model.joblib")
    return copy


@pytest.mark.parametrize(
    ("flower", "species"),
    [((5.1, 3.5, 1.4, 0.2), "setosa"), ((6.0, 2.7, 4.1, 1.0), "versicolor"), ((6.7, 3.0, 5.8, 2.2), "virginica")],
)
def test_the_classifier_names_the_species_and_saves_the_prediction(iris_copy, flower, species):
    request = Request(sepal_length=flower[0], sepal_width=flower[1], petal_length=flower[2], petal_width=flower[3])

    with run_node(iris_copy, "src/classifier.py") as node:
        answer = node.call(request, Response)

    assert answer.species == species
    assert sum(answer.probabilities.values()) == pytest.approx(1.0)
    assert answer.probabilities[species] == max(answer.probabilities.values())
    assert node.points[0].measurement == "iris_predictions"
    assert node.points[0].tags["species"] == species


def test_the_classifier_rejects_a_request_of_another_type(iris_copy):
    with run_node(iris_copy, "src/classifier.py") as node, pytest.raises(InvalidRequestError) as caught:
        node.call(Response(species="not a request"))

    assert str(caught.value) == "invalid request: expected iris.Request, received iris.Response"


def test_validate_rejects_a_flower_that_cannot_be_one_before_the_model_sees_it(iris_copy):
    flower = Request(sepal_length=5.1, sepal_width=3.5, petal_length=1.4, petal_width=0.0)

    with run_node(iris_copy, "src/classifier.py") as node, pytest.raises(InvalidRequestError) as caught:
        node.call(flower)

    assert "petal_width must be a length in cm between 0 and 100, got 0" in str(caught.value)
    assert node.points == []


def test_a_batch_is_classified_in_one_call_and_a_flower_validate_rejects_is_left_out(iris_copy):
    flowers = [(5.1, 3.5, 1.4, 0.2), (6.0, 2.7, 4.1, 0.0), (6.7, 3.0, 5.8, 2.2)]
    requests = [Request(sepal_length=a, sepal_width=b, petal_length=c, petal_width=d) for a, b, c, d in flowers]

    with run_node(iris_copy, "src/classifier.py") as node:
        answers = node.call_batch(requests, Response)

    assert [answers[0].species, answers[2].species] == ["setosa", "virginica"]
    assert isinstance(answers[1], InvalidRequestError) and "petal_width must be a length" in str(answers[1])
    assert [point.tags["species"] for point in node.points] == ["setosa", "virginica"]
