"""Train the iris classifier and save it where the node's ``init`` loads it: ``models/model.joblib``.

    python examples/iris/train.py                 # writes examples/iris/models/model.joblib
    python examples/iris/train.py --out m.joblib  # anywhere else

Uses the iris data bundled with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
# A fixed split, so every run trains the same model.
SEED = 7


def train() -> tuple[Pipeline, float]:
    """A scaler + logistic regression fitted on 75% of the flowers; its accuracy on the other 25%."""
    iris = load_iris()
    species = iris.target_names[iris.target]  # the model predicts names, not 0/1/2
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, species, test_size=0.25, random_state=SEED, stratify=species
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x_train, y_train)
    return model, float(model.score(x_test, y_test))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "models" / "model.joblib", help="where to save the model")
    args = parser.parse_args(argv)
    model, accuracy = train()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, args.out)
    print(f"saved {args.out} (accuracy on held-out flowers: {accuracy:.3f})")


if __name__ == "__main__":
    main()
