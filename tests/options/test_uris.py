"""MLflow model URIs: the grammar (otrain.options.uris) and the resolution of an alias against a real registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from otrain.errors import DataError
from otrain.options.uris import (
    ModelUri,
    is_mlflow_uri,
    model_alias_uri,
    model_version_uri,
    parse_model_uri,
    run_model_uri,
)

RUN_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("models:/otrain-cnn/3", ModelUri(name="otrain-cnn", version="3")),
        ("models:/otrain-cnn@champion", ModelUri(name="otrain-cnn", alias="champion")),
        ("models:/a name.v2/12", ModelUri(name="a name.v2", version="12")),
        (f"runs:/{RUN_ID}/model", ModelUri(run_id=RUN_ID, path="model")),
        (f"runs:/{RUN_ID}/model/data/model.keras", ModelUri(run_id=RUN_ID, path="model/data/model.keras")),
    ],
)
def test_a_uri_parses_into_its_parts_and_builds_back(uri: str, parts: ModelUri) -> None:
    assert is_mlflow_uri(uri)
    assert parse_model_uri(uri) == parts
    assert str(parts) == uri


def test_the_builders_spell_the_uris_the_parser_reads() -> None:
    assert model_version_uri("otrain-cnn", 3) == "models:/otrain-cnn/3"
    assert model_alias_uri("otrain-cnn", "champion") == "models:/otrain-cnn@champion"
    assert run_model_uri(RUN_ID) == f"runs:/{RUN_ID}/model"
    for uri in (model_version_uri("m", "7"), model_alias_uri("m", "a_b-1"), run_model_uri(RUN_ID, "x/y")):
        assert str(parse_model_uri(uri)) == uri


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        ("models:/otrain-cnn", "must be models:/<name>/<version> or models:/<name>@<alias>"),
        ("models:/otrain-cnn/latest", "must be models:/<name>/<version> or models:/<name>@<alias>"),
        ("models:/a/b/1", "must be models:/<name>/<version> or models:/<name>@<alias>"),
        ("models:/otrain-cnn@", "must be models:/<name>/<version> or models:/<name>@<alias>"),
        ("models:/otrain-cnn@bad alias", "must be models:/<name>/<version> or models:/<name>@<alias>"),
        ("runs:/abc/model", "must be runs:/<32-hex-digit run id>/<artifact path>"),
        (f"runs:/{RUN_ID}/", "must be runs:/<32-hex-digit run id>/<artifact path>"),
        (f"runs:/{RUN_ID.upper()}/model", "must be runs:/<32-hex-digit run id>/<artifact path>"),
        ("models/otrain-cnn/1", "must be an MLflow model URI (models:/... or runs:/...)"),
    ],
)
def test_a_uri_that_breaks_the_grammar_says_the_rule(uri: str, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{rule}, got {uri!r}")):
        parse_model_uri(uri)


def test_paths_are_not_mlflow_uris() -> None:
    for value in ("model.keras", "/data/mlflow_model", "models/otrain-cnn", "s3://bucket/model"):
        assert not is_mlflow_uri(value)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """A SQLite store with the registered model 'cnn': versions 1 and 2 from two runs, 'champion' on 2."""
    from mlflow.tracking import MlflowClient

    from otrain.track.tracking import using_tracking_uri

    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("uris", artifact_location=(folder / "mlruns").as_uri())
    client.create_registered_model("cnn")
    runs = []
    with using_tracking_uri(uri):
        for _ in range(2):
            run = client.create_run(experiment)
            artifact = folder / "MLmodel"
            artifact.write_text("flavors: {}\n")
            client.log_artifact(run.info.run_id, str(artifact), artifact_path="model")
            client.set_terminated(run.info.run_id)
            client.create_model_version("cnn", run_model_uri(run.info.run_id), run.info.run_id)
            runs.append(run.info.run_id)
    client.set_registered_model_alias("cnn", "champion", "2")
    return uri, runs


def test_an_alias_resolves_to_the_version_it_names(registry: tuple[str, list[str]]) -> None:
    from mlflow.tracking import MlflowClient

    from otrain.track.tracking import using_tracking_uri
    from otrain.track.uris import resolve_alias

    uri, _ = registry
    client = MlflowClient(uri)
    assert resolve_alias("models:/cnn@champion", client) == "models:/cnn/2"
    with using_tracking_uri(uri):  # as otrain-serve calls it: the client of the current tracking URI
        assert resolve_alias("models:/cnn@champion") == "models:/cnn/2"
    client.set_registered_model_alias("cnn", "champion", "1")
    try:
        assert resolve_alias("models:/cnn@champion", client) == "models:/cnn/1"
    finally:
        client.set_registered_model_alias("cnn", "champion", "2")


def test_what_is_not_an_alias_is_not_looked_up(registry: tuple[str, list[str]], tmp_path: Path) -> None:
    from otrain.track.uris import resolve_alias

    # No client is made, so no store is asked: these come back as they were given.
    for uri in ("models:/cnn/1", "models:/no-such-model/9", f"runs:/{RUN_ID}/model", str(tmp_path / "mlflow_model")):
        assert resolve_alias(uri) == uri


def test_an_unknown_alias_is_one_line_naming_the_uri(registry: tuple[str, list[str]]) -> None:
    from mlflow.tracking import MlflowClient

    from otrain.track.uris import resolve_alias

    uri, _ = registry
    for missing in ("models:/cnn@nobody", "models:/no-such-model@champion"):
        with pytest.raises(DataError, match=re.escape(f"{missing}: no such registered model alias (")) as raised:
            resolve_alias(missing, MlflowClient(uri))
        assert "\n" not in str(raised.value)


def test_the_run_of_a_model_is_found_from_any_of_its_uris(registry: tuple[str, list[str]]) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from otrain.track.uris import run_of

    uri, (first, second) = registry
    client = MlflowClient(uri)
    assert run_of(client, "models:/cnn@champion") == second
    assert run_of(client, "models:/cnn/1") == first
    assert run_of(client, run_model_uri(first)) == first
    assert run_of(client, f"runs:/{RUN_ID}/model") == RUN_ID  # read from the URI: no store asked
    with pytest.raises(MlflowException):
        run_of(client, "models:/cnn/7")
