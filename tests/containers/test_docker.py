"""The CPU image for real: build it and run the pipeline in it, with the documentation's own commands.

A Docker engine is reused when one answers, otherwise Debian's engine is started with its own
data root and socket (docker/engine.sh) and stopped at the end. Installing the engine or
debootstrap is left to the machine's owner: without them (and without
OTRAIN_INSTALL_SYSTEM_PACKAGES=1, which .ci/run sets) these tests are skipped with the reason.
The "docker-test" blocks of docs/containers.md are what runs: the build block from the repository
root, the run block in an empty folder bind-mounted into the container, as a non-root caller
(when the tests run as root, as an unprivileged account in the engine's socket group), whose
files must stay its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from astropy.table import Table
from conftest import ROOT, constraint_pins

IMAGE = "otrain:cpu"
IMAGE_UID = 10001
#: The unprivileged caller used when the tests run as root.
CALLER_UID = 4242

pytestmark = pytest.mark.docker
#: docker/engine.sh and docker/base-image.sh: what they need is missing and may not be installed.
ENGINE_UNAVAILABLE = 3
RUN_THEM = "sudo OTRAIN_INSTALL_SYSTEM_PACKAGES=1 make docker-test, or DOCKER_HOST set to a running engine"
#: The page whose docker-test blocks run.
PAGE = ROOT / "docs" / "containers.md"


def docs_block(name: str) -> str:
    """Return the bash block that follows ``<!-- docker-test: NAME ... -->`` in docs/containers.md."""
    match = re.search(rf"<!-- docker-test: {name}\b[^>]*-->\s*```bash\n(.*?)```", PAGE.read_text(), re.DOTALL)
    assert match, f"docs/containers.md has no docker-test block named {name}"
    return match.group(1)


def run_docs_block(name: str, cwd: Path, env: dict[str, str], **options: object) -> subprocess.CompletedProcess[str]:
    """Run a docker-test block of docs/containers.md with bash, as written (traced, stopping at the first error)."""
    result = subprocess.run(
        ["bash", "-euxo", "pipefail", "-c", docs_block(name)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=3000,
        **options,  # type: ignore[arg-type]
    )
    assert result.returncode == 0, f"docs/containers.md block {name}: " + result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def docker_env() -> Iterator[dict[str, str]]:
    """Environment whose DOCKER_HOST reaches an engine; an engine started here is stopped after."""
    engine = ROOT / "docker" / "engine.sh"
    started = subprocess.run([str(engine), "start"], capture_output=True, text=True, check=False, timeout=600)
    if started.returncode == ENGINE_UNAVAILABLE:
        pytest.skip(f"no Docker engine: {started.stderr.strip()} (to run them: {RUN_THEM})")
    assert started.returncode == 0, started.stderr
    env = {**os.environ, "DOCKER_HOST": started.stdout.strip()}
    try:
        yield env
    finally:
        if "started dockerd" in started.stderr:
            subprocess.run([str(engine), "stop"], check=True, timeout=120)


def docker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def image(docker_env: dict[str, str]) -> str:
    """The CPU image, built by the build block of docs/containers.md."""
    base = subprocess.run(
        [str(ROOT / "docker" / "base-image.sh")], capture_output=True, text=True, env=docker_env, timeout=1800
    )
    if base.returncode == ENGINE_UNAVAILABLE:
        pytest.skip(f"no base image: {base.stderr.strip()} (to run them: {RUN_THEM})")
    run_docs_block("build", ROOT, docker_env)
    size = int(docker(docker_env, "image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\n{IMAGE}: {size / 1e9:.2f} GB")
    return IMAGE


def test_image_runs_as_a_fixed_non_root_user(docker_env: dict[str, str], image: str) -> None:
    user = docker(docker_env, "image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    assert user == f"{IMAGE_UID}:{IMAGE_UID}"
    ids = docker(docker_env, "run", "--rm", "--network", "none", image, "id").stdout
    assert f"uid={IMAGE_UID}(otrain)" in ids


def test_builds_leave_no_untagged_images_of_their_own(docker_env: dict[str, str], image: str) -> None:
    """The wheel stage (and any image a rebuild replaced) is pruned; the deps stage stays tagged as the cache."""
    untagged = docker(docker_env, "images", "--quiet", "--filter", "dangling=true", "--filter", "label=io.otrain.stage")
    assert untagged.stdout.strip() == ""
    label = '{{index .Config.Labels "io.otrain.stage"}}'
    stage = docker(docker_env, "image", "inspect", "--format", label, f"{image}-deps")
    assert stage.stdout.strip() == "deps"


def test_image_has_the_tools_and_no_compilers_or_caches(docker_env: dict[str, str], image: str) -> None:
    probe = (
        "for tool in otrain-train otrain-infer otrain-simulate dvc mlflow git make; do command -v $tool; done; "
        "for tool in gcc cc g++ clang; do if command -v $tool; then echo COMPILER $tool; fi; done; "
        "for cache in /var/lib/apt/lists /var/cache/apt/archives /root/.cache /home/otrain/.cache /tmp; do "
        "find $cache -mindepth 1 -not -name partial -not -name lock | grep -q . && echo CACHE $cache; done; "
        "python -c 'import otrain, psycopg2, tensorflow; print(tensorflow.__version__)'"
    )
    # As root, so that no folder is out of the probe's sight.
    output = docker(docker_env, "run", "--rm", "--network", "none", "--user", "0", image, "sh", "-c", probe).stdout
    for tool in ("otrain-train", "otrain-infer", "otrain-simulate", "dvc", "mlflow", "git", "make"):
        assert f"/{tool}\n" in output, f"{tool} is not on PATH in the image"
    assert "COMPILER" not in output
    assert "CACHE" not in output
    assert output.strip().endswith(constraint_pins()["tensorflow_cpu"])


@pytest.fixture(scope="module")
def pipeline_folder(docker_env: dict[str, str], image: str) -> Iterator[tuple[Path, int, subprocess.CompletedProcess]]:
    """An empty folder (outside pytest's private tmp, which the caller may not enter) after the
    run block of docs/containers.md ran in it."""
    folder = Path(tempfile.mkdtemp(prefix="otrain-docker-"))
    user: dict[str, object] = {}
    uid = os.geteuid()
    env = {**docker_env, "HOME": str(folder), "DOCKER_CONFIG": str(folder / ".docker-config")}
    if uid == 0:
        uid = CALLER_UID
        socket = Path(docker_env["DOCKER_HOST"].removeprefix("unix://"))
        os.chown(folder, CALLER_UID, CALLER_UID)
        user = {"user": CALLER_UID, "group": CALLER_UID, "extra_groups": [socket.stat().st_gid]}
    try:
        result = run_docs_block("run", folder, env, **user)
        shutil.rmtree(folder / ".docker-config", ignore_errors=True)
        yield folder, uid, result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_help_runs_in_the_container(pipeline_folder: tuple[Path, int, subprocess.CompletedProcess]) -> None:
    output = pipeline_folder[2].stdout
    assert "otrain-train" in output
    assert "--epochs" in output


def test_pipeline_in_the_container_scores_the_night(
    pipeline_folder: tuple[Path, int, subprocess.CompletedProcess],
) -> None:
    folder = pipeline_folder[0]
    assert (folder / "datacube" / "survey.npz").stat().st_size > 0
    model_dir = folder / "models" / "CNN_training" / "tiny"
    assert (model_dir / "tiny.keras").is_file()
    assert (model_dir / "metrics.json").is_file()
    scored = Table.read(folder / "survey" / "night" / "infer_results.dat", format="ascii.commented_header")
    night = list((folder / "survey" / "night").glob("*.fits*"))
    assert 0 < len(scored) <= len(night)
    assert ((scored["label1"] >= 0) & (scored["label1"] <= 1)).all()
    assert (folder / "mlflow.db").is_file(), "training in the container is tracked (SQLite in the folder)"


def test_files_written_by_the_container_belong_to_the_caller(
    pipeline_folder: tuple[Path, int, subprocess.CompletedProcess],
) -> None:
    folder, uid, _ = pipeline_folder
    paths = list(folder.rglob("*"))
    assert len(paths) > 100
    strangers = [path for path in paths if path.lstat().st_uid != uid]
    assert not strangers, f"{len(strangers)} files are not the caller's, e.g. {strangers[:3]}"
    assert uid != 0, "the run block ran as a non-root caller"


def test_the_device_check_of_the_ci_workflow_imports_tensorflow(docker_env: dict[str, str], image: str) -> None:
    """The command the CI workflow runs in the GPU image, run here in the CPU image."""
    result = docker(docker_env, "run", "--rm", "--network", "none", image, "python", "-m", "otrain.nets.model")
    assert result.stdout.strip() == f"TensorFlow {constraint_pins()['tensorflow_cpu']}: GPUs none, running on the CPU"


def test_commands_log_the_gpus_tensorflow_sees(pipeline_folder: tuple[Path, int, subprocess.CompletedProcess]) -> None:
    log = pipeline_folder[2].stderr
    assert "otrain-train: info: TensorFlow" in log
    assert "sees no GPU; running on the CPU" in log
    assert "otrain-infer: info: TensorFlow" not in log  # the model's ONNX twin scores, without TensorFlow


def test_the_spark_image_scores_the_night_as_otrain_infer_did(
    docker_env: dict[str, str], pipeline_folder: tuple[Path, int, subprocess.CompletedProcess]
) -> None:
    """otrain:spark (`make docker-image-spark`) runs otrain-infer-spark on local[2], network off."""
    result = subprocess.run(
        ["make", "docker-image-spark", f"IMAGE={IMAGE}", "SPARK_IMAGE=otrain:spark"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=docker_env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    source = pipeline_folder[0]
    folder = Path(tempfile.mkdtemp(prefix="otrain-spark-"))
    try:
        shutil.copytree(source / "survey" / "night", folder / "survey" / "night")
        shutil.copytree(source / "models", folder / "models")
        for path in [folder, *folder.rglob("*")]:  # the image's own user (Spark needs a named user) writes here
            path.chmod(0o777 if path.is_dir() else 0o666)
        model = "models/CNN_training/tiny/tiny.keras"
        command = ["otrain-infer-spark", "--cutouts", "survey/night", "--model", model, "--master", "local[2]"]
        command += ["--output", "scores.parquet", "--table", "spark.dat"]
        result = docker(
            docker_env, "run", "--rm", "--network", "none", "-v", f"{folder}:/work", "otrain:spark", *command
        )
        assert "written: spark.dat" in result.stdout
        expected = Table.read(source / "survey" / "night" / "infer_results.dat", format="ascii.commented_header")
        got = Table.read(folder / "spark.dat", format="ascii.commented_header")
        assert sorted(got["filename"]) == sorted(expected["filename"])
        by_name = {row["filename"]: row["label1"] for row in got}
        for row in expected:
            assert abs(by_name[row["filename"]] - row["label1"]) < 1e-5, row["filename"]
    finally:
        # What the image's user wrote, removed by it (this process may not own it).
        docker(
            docker_env,
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{folder}:/work",
            IMAGE,
            "find",
            "/work",
            "-mindepth",
            "1",
            "-delete",
        )
        shutil.rmtree(folder, ignore_errors=True)
