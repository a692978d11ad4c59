"""The checkpoint of a training, and Ctrl-C and SIGTERM during its fit.

A training's folder holds, while it runs, ``.checkpoint/`` (:class:`Checkpoint`): after every
epoch the weights, the optimiser's state, the best weights so far and the early-stopping state,
in a new ``epoch-NNNN/`` folder, then ``latest.json`` pointing at it, replaced atomically, so
that ``--resume`` continues the same training whenever the process died. During the fit,
:func:`interrupt_between_steps` defers an interrupt to the next step boundary. The layout of a
whole training, and how its outputs are staged and published, are described in
:mod:`otrain.train.training`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otrain.errors import DataError
from otrain.io.atomic import atomic_path, write_text_atomic
from otrain.io.jsonfile import read_json
from otrain.io.layout import CHECKPOINT_COMPLETE, CHECKPOINT_POINTER, CHECKPOINT_STAGING

__all__ = ["COMPLETE", "POINTER", "STAGING", "Checkpoint", "interrupt_between_steps"]


#: Inside the checkpoint: the pointer to the last finished epoch, and the staged final outputs.
POINTER, STAGING, COMPLETE = CHECKPOINT_POINTER, CHECKPOINT_STAGING, CHECKPOINT_COMPLETE
_WEIGHTS = "latest.weights.h5"
_BEST_WEIGHTS = "best.weights.h5"


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` as ``target`` (no copy of the weights), or copy it where links are not supported."""
    try:
        os.link(source, target)
    except OSError:
        with atomic_path(target) as temporary:
            shutil.copyfile(source, temporary)


@dataclass
class Checkpoint:
    """The checkpoint of a training: finished epochs, their history, early-stopping state.

    Attributes
    ----------
    folder : Path
        ``<training folder>/.checkpoint``.
    epochs_done : int
        Epochs finished (0: none yet).
    history : list of dict
        One row per finished epoch (the columns of ``history.csv``).
    best_value : float or None
        Best value so far of the monitored validation metric (``--monitor``).
    best_epoch : int
        The epoch that reached it (1-based; 0 when none).
    wait : int
        Epochs since then.
    learning_rate : float or None
        The learning rate reached by ``--lr-schedule plateau`` (None: the initial one).
    stopped : bool
        Early stopping ended the training.
    state : str or None
        The ``epoch-NNNN`` folder holding the weights of the last finished epoch.
    """

    folder: Path
    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False
    state: str | None = None
    learning_rate: float | None = None

    @classmethod
    def read(cls, folder: Path) -> Checkpoint:
        """Read the checkpoint of ``folder``; one without a finished epoch reads as epoch 0.

        Raises
        ------
        DataError
            When ``latest.json`` or the weights it names cannot be read; the message names the file.
        """
        pointer = folder / POINTER
        if not pointer.is_file():
            return cls(folder)

        def parse(data: Any) -> Checkpoint:
            if "best_val_loss" in data:  # a checkpoint from before --monitor, which watched the loss
                data["best_value"] = data.pop("best_val_loss")
            return cls(folder, **{key: data[key] for key in data if key != "folder"})

        checkpoint = read_json(
            pointer, "the checkpoint cannot be read", parse=parse, advice="pass --overwrite to start again"
        )
        if checkpoint.state is None or not (folder / checkpoint.state / _WEIGHTS).is_file():
            raise DataError(
                f"{pointer}: the checkpoint names weights that do not exist; pass --overwrite to start again"
            )
        return checkpoint

    @property
    def weights(self) -> Path | None:
        """The weights (and optimiser state) of the last finished epoch."""
        return self.folder / self.state / _WEIGHTS if self.state else None

    @property
    def best_weights(self) -> Path | None:
        """The weights of the epoch with the best monitored value, when kept."""
        path = self.folder / self.state / _BEST_WEIGHTS if self.state else None
        return path if path is not None and path.is_file() else None

    def save(self, model: Any, improved: bool, keep_best: bool) -> None:
        """Write the state of the epoch just finished, then point ``latest.json`` at it (atomically).

        Parameters
        ----------
        model : keras.Model
            The compiled model; its weights and its optimiser's state are saved.
        improved : bool
            This epoch has the best monitored value so far (its weights become the best ones).
        keep_best : bool
            Keep the best weights (early stopping restores them).
        """
        previous = self.best_weights
        state = f"epoch-{self.epochs_done:04d}"
        folder = self.folder / state
        shutil.rmtree(folder, ignore_errors=True)  # a half-written one from a killed run
        folder.mkdir(parents=True)
        with atomic_path(folder / _WEIGHTS) as temporary:
            model.save_weights(temporary)
        if keep_best and improved:
            _link_or_copy(folder / _WEIGHTS, folder / _BEST_WEIGHTS)
        elif keep_best and previous is not None:
            _link_or_copy(previous, folder / _BEST_WEIGHTS)
        self.state = state
        record = {key: value for key, value in self.__dict__.items() if key != "folder"}
        write_text_atomic(self.folder / POINTER, json.dumps(record, indent=1) + "\n")
        for old in self.folder.glob("epoch-*"):
            if old.name != state:
                shutil.rmtree(old, ignore_errors=True)

    def load_into(self, model: Any, best: bool = False) -> None:
        """Load the last (or best) weights and the optimiser state into a freshly built model.

        Parameters
        ----------
        model : keras.Model
            A compiled model of the same architecture.
        best : bool
            Load the best weights instead of the last ones.

        Raises
        ------
        DataError
            When the weights file cannot be read (corrupt or truncated); the message names it.
        """
        path = self.best_weights if best else self.weights
        if path is None:
            return
        if not model.optimizer.built:  # its state is in the file too; building it twice adds variables
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(path)
        except Exception:  # h5py and Keras raise many types on a damaged file
            raise DataError(
                f"{path}: checkpoint cannot be read (corrupt or truncated); pass --overwrite to start again"
            ) from None


@contextmanager
def interrupt_between_steps() -> Iterator[Callable[[], None]]:
    """Defer Ctrl-C and SIGTERM during ``fit`` to the next step boundary.

    A KeyboardInterrupt raised at an arbitrary point inside TensorFlow's training loop has been
    seen to crash the process (SIGSEGV) instead of ending it cleanly; raised from a callback
    between two steps, it unwinds like any exception. Yields the check the callback calls.
    Outside the main thread (a library caller's worker) signals cannot be caught: nothing changes.
    """
    pending: list[int] = []

    def check() -> None:
        if pending:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda number, frame: pending.append(number)) for number in signals}
    try:
        yield check
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    check()  # a signal that came after the last step
